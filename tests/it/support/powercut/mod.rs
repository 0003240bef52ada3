//! Simulated power loss under the real server.
//!
//! SIGKILL keeps the kernel's page cache: whatever a killed process wrote is still read back
//! after it, synced or not, so a kill alone cannot show a missing fsync. [`PowerCut`] runs the
//! server with `shim.c` preloaded (`LD_PRELOAD`), which records for every file under the data
//! directory what fsync/fdatasync made durable. [`PowerCut::cut`] then kills the server and
//! rolls every file back to that durable state, as a machine that lost power could come back:
//! unsynced bytes are gone, and files created since their directory was last synced vanish.
//! The model and its limits are described at the top of `shim.c`.
//!
//! [`PowerCut::cut_during_sync`] cuts at the worst moment, in place of a sync, so that a write
//! acknowledged before its sync completed is caught whatever the timing. The shim can also
//! make fsync (or write) fail with EIO on demand ([`PowerCut::inject`]), to test what the
//! server does when the disk fails.
//!
//! The shim is compiled at run time with the system C compiler (`cc`), once per test binary,
//! into `CARGO_TARGET_TMPDIR`.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use super::TestServer;

const SHIM_SOURCE: &str = include_str!("shim.c");

/// The environment that runs a process under the shim (values from [`PowerCut::watch`]).
const SHIM_ENV: [&str; 5] = [
    "LD_PRELOAD",
    "HEARTH_POWERCUT_DIR",
    "HEARTH_POWERCUT_LOG",
    "HEARTH_POWERCUT_UNDO",
    "HEARTH_POWERCUT_FAIL",
];

/// The shim library, compiled once per test binary.
fn shim_library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        SHIM_SOURCE.hash(&mut hasher);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("powercut");
        fs::create_dir_all(&dir).expect("create the shim's build directory");
        let library = dir.join(format!("libpowercut-{:016x}.so", hasher.finish()));
        if library.exists() {
            return library;
        }
        // Built under a private name and renamed, so test binaries of other checkouts sharing
        // the target directory never load a half-written library.
        let source = dir.join(format!("shim-{}.c", std::process::id()));
        let partial = dir.join(format!("libpowercut-{}.so.partial", std::process::id()));
        fs::write(&source, SHIM_SOURCE).expect("write the shim source");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&partial)
            .arg(&source)
            .args(["-ldl", "-lpthread"])
            .output()
            .expect("run cc (the C compiler) to build the power-cut shim");
        assert!(
            out.status.success(),
            "compiling the power-cut shim failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::rename(&partial, &library).expect("install the shim");
        let _ = fs::remove_file(&source);
        library
    })
}

/// A file identity: (device, inode).
type Id = (u64, u64);

/// One line of the shim's log.
#[derive(Debug)]
enum Record {
    Create { id: Id, parent: Id },
    Sync { id: Id, size: u64 },
    DirSync(Id),
    Undo { id: Id, offset: u64, len: u64, at: u64 },
    Fail(String),
    Cut,
    Unsupported(String),
}

fn parse(line: &str) -> Option<Record> {
    let words: Vec<&str> = line.split(' ').collect();
    let n = |i: usize| -> Option<u64> { words.get(i)?.parse().ok() };
    let id = |i: usize| -> Option<Id> { Some((n(i)?, n(i + 1)?)) };
    Some(match *words.first()? {
        "create" => Record::Create {
            id: id(1)?,
            parent: id(3)?,
        },
        "sync" => Record::Sync {
            id: id(1)?,
            size: n(3)?,
        },
        "dirsync" => Record::DirSync(id(1)?),
        "undo" => Record::Undo {
            id: id(1)?,
            offset: n(3)?,
            len: n(4)?,
            at: n(5)?,
        },
        // `seen` and `unlink` are there for people reading a log; the cut does not need them.
        "fail" => Record::Fail(words[1..].join(" ")),
        "cut" => Record::Cut,
        "unsupported" => Record::Unsupported(words[1..].join(" ")),
        _ => return None,
    })
}

/// Regular files under `dir`, recursively, with their identity.
fn files_under(dir: &Path) -> Vec<(PathBuf, Id, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.map_while(Result::ok) {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(files_under(&path));
        } else if meta.is_file() {
            out.push((path, (meta.dev(), meta.ino()), meta.len()));
        }
    }
    out
}

/// What a cut did to the data directory.
#[derive(Debug, Default)]
pub struct CutReport {
    /// Files cut back to their durable length: (name, length before, durable length).
    pub truncated: Vec<(String, u64, u64)>,
    /// Files whose creation was never made durable (their directory was not synced after it).
    pub removed: Vec<(String, u64)>,
    /// Overwritten durable bytes put back.
    pub restored_bytes: u64,
    /// Failures the shim injected.
    pub injected: Vec<String>,
    /// The server killed itself in place of a sync ([`PowerCut::cut_during_sync`]).
    pub cut_during_sync: bool,
    /// Things the model cannot roll back (the cut is then not trustworthy).
    pub unsupported: Vec<String>,
}

impl CutReport {
    /// Unsynced bytes the cut threw away (truncated tails and removed files).
    pub fn bytes_lost(&self) -> u64 {
        self.truncated.iter().map(|(_, from, to)| from - to).sum::<u64>()
            + self.removed.iter().map(|(_, len)| len).sum::<u64>()
    }
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "power cut: {} unsynced bytes lost, {} overwritten durable bytes restored",
            self.bytes_lost(),
            self.restored_bytes
        )?;
        for (name, from, to) in &self.truncated {
            writeln!(f, "  {name}: {from} -> {to} bytes")?;
        }
        for (name, len) in &self.removed {
            writeln!(
                f,
                "  {name}: removed ({len} bytes; its creation was never made durable)"
            )?;
        }
        if self.cut_during_sync {
            writeln!(f, "  (cut while a sync was under way)")?;
        }
        for what in &self.injected {
            writeln!(f, "  injected failure: {what}")?;
        }
        for what in &self.unsupported {
            writeln!(f, "  UNSUPPORTED by the model: {what}")?;
        }
        Ok(())
    }
}

/// Power-cut control for one [`TestServer`]'s data directory.
pub struct PowerCut {
    state: tempfile::TempDir,
    /// Files present when the server was armed, taken as durable: identity → length.
    baseline: HashMap<Id, u64>,
}

impl PowerCut {
    /// Builds the shim (once per test binary) and a directory for its log.
    pub fn new() -> PowerCut {
        shim_library();
        PowerCut {
            state: tempfile::tempdir().expect("temp dir"),
            baseline: HashMap::new(),
        }
    }

    fn log(&self) -> PathBuf {
        self.state.path().join("log")
    }

    fn undo(&self) -> PathBuf {
        self.state.path().join("undo")
    }

    fn marker(&self) -> PathBuf {
        self.state.path().join("fail")
    }

    /// Makes the next [`TestServer::launch`] run under the shim. Whatever is in the data
    /// directory now is taken as durable (the machine was in a synced state when it booted).
    pub fn arm(&mut self, server: &mut TestServer) {
        assert!(!server.is_running(), "arm before launching");
        // The shim compares absolute paths: give it (and the server) the same, resolved one.
        let parent = server.data_dir.parent().expect("the data dir has a parent");
        fs::create_dir_all(parent).unwrap();
        server.data_dir = fs::canonicalize(parent)
            .unwrap()
            .join(server.data_dir.file_name().unwrap());
        for (key, value) in self.watch(&server.data_dir) {
            server.set_env(key, &value);
        }
    }

    /// Starts a fresh record of `dir` (absolute, without symlinks) and returns the environment
    /// that runs a process under the shim watching it. What `dir` holds now is taken as durable.
    pub fn watch(&mut self, dir: &Path) -> Vec<(&'static str, String)> {
        let _ = fs::remove_file(self.log());
        let _ = fs::remove_file(self.undo());
        self.inject(None);
        self.baseline = files_under(dir).into_iter().map(|(_, id, len)| (id, len)).collect();
        let values = [shim_library(), dir, &self.log(), &self.undo(), &self.marker()];
        SHIM_ENV
            .into_iter()
            .zip(values.map(|path| path.display().to_string()))
            .collect()
    }

    /// Makes fsync/fdatasync (`Some("fsync")`) or writes (`Some("write")`) of files in the data
    /// directory fail with EIO from now on, or stops failing them (`None`).
    pub fn inject(&self, failure: Option<&str>) {
        match failure {
            Some(what) => fs::write(self.marker(), what).unwrap(),
            None => {
                let _ = fs::remove_file(self.marker());
            }
        }
    }

    /// The power cut: SIGKILL, then every file in the data directory is rolled back to what
    /// was durable. The server is left stopped and disarmed (the next launch runs without the
    /// shim unless armed again).
    pub fn cut(&mut self, server: &mut TestServer) -> CutReport {
        server.kill9();
        let dir = server.data_dir.clone();
        for key in SHIM_ENV {
            server.remove_env(key);
        }
        self.power_off(&dir)
    }

    /// The power cut at the worst moment: the server kills itself in place of its next sync
    /// of a data file (after 50 ms, so answers it already sent reach their clients), then every
    /// file is rolled back as by [`PowerCut::cut`]. A write acknowledged before its sync
    /// completed is lost then, whatever the timing. Panics unless a sync comes within 10 s.
    pub fn cut_during_sync(&mut self, server: &mut TestServer) -> CutReport {
        fs::write(self.marker(), "cut").unwrap();
        assert!(
            server.wait_for_exit(Duration::from_secs(10)),
            "no sync came within 10 s to cut the power at"
        );
        let report = self.cut(server);
        assert!(report.cut_during_sync, "the server died, but not at a sync\n{report}");
        report
    }

    /// Rolls every file under the watched `dir` back to what was durable. Every process that
    /// wrote there under the shim must have ended.
    pub fn power_off(&mut self, dir: &Path) -> CutReport {
        self.inject(None);
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let records: Vec<Record> = text.lines().filter_map(parse).collect();
        let report = self.roll_back(dir, &records);
        let _ = fs::remove_file(self.log());
        let _ = fs::remove_file(self.undo());
        report
    }

    fn roll_back(&self, data_dir: &Path, records: &[Record]) -> CutReport {
        let mut report = CutReport::default();
        for record in records {
            match record {
                Record::Fail(what) => report.injected.push(what.clone()),
                Record::Cut => report.cut_during_sync = true,
                Record::Unsupported(what) => report.unsupported.push(what.clone()),
                _ => {}
            }
        }
        let mut undo = File::open(self.undo()).ok();
        for (path, id, len) in files_under(data_dir) {
            let name = path.strip_prefix(data_dir).unwrap_or(&path).display().to_string();
            // The inode's current life began at its last creation (inode numbers are reused),
            // or before the server started.
            let born = records
                .iter()
                .rposition(|r| matches!(r, Record::Create { id: i, .. } if *i == id));
            if born.is_none() && !self.baseline.contains_key(&id) {
                report
                    .unsupported
                    .push(format!("{name} appeared without the shim seeing it created"));
                continue;
            }
            // A new file exists after the cut only if its directory was synced after its creation.
            if let Some(b) = born {
                let Record::Create { parent, .. } = &records[b] else {
                    unreachable!()
                };
                if !records[b..]
                    .iter()
                    .any(|r| matches!(r, Record::DirSync(d) if d == parent))
                {
                    fs::remove_file(&path).unwrap();
                    report.removed.push((name, len));
                    continue;
                }
            }
            let life = born.unwrap_or(0);
            let last_sync = records[life..]
                .iter()
                .rposition(|r| matches!(r, Record::Sync { id: i, .. } if *i == id))
                .map(|i| i + life);
            let durable = match last_sync.map(|i| &records[i]) {
                Some(Record::Sync { size, .. }) => *size,
                _ if born.is_some() => 0,
                _ => self.baseline[&id],
            };
            // Put back durable bytes overwritten since the last sync, newest first, so the
            // oldest saved value (the durable one) is written last.
            let undos: Vec<(u64, u64, u64)> = records[last_sync.unwrap_or(life)..]
                .iter()
                .filter_map(|r| match r {
                    Record::Undo { id: i, offset, len, at } if *i == id => Some((*offset, *len, *at)),
                    _ => None,
                })
                .collect();
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            for (offset, count, at) in undos.into_iter().rev() {
                let undo = undo.as_mut().expect("undo records need the undo file");
                let mut bytes = vec![0; usize::try_from(count).unwrap()];
                undo.seek(SeekFrom::Start(at)).unwrap();
                undo.read_exact(&mut bytes).unwrap();
                file.write_all_at(&bytes, offset).unwrap();
                report.restored_bytes += count;
            }
            let now = file.metadata().unwrap().len();
            if now < durable {
                report
                    .unsupported
                    .push(format!("{name} is shorter ({now}) than its durable length ({durable})"));
            } else if now > durable {
                file.set_len(durable).unwrap();
                report.truncated.push((name, now, durable));
            }
        }
        report
    }
}

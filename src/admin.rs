//! Admin commands run from the command line (`hearth user …`, `hearth registration-token …`,
//! `hearth generate-config`). They open the data directory directly, through the same services
//! the server uses; RocksDB's lock makes them refuse, with a clear message, while a server runs.

use std::{io::BufRead, path::Path, sync::Arc, time::Duration};

use crate::{
    cli::PasswordSource,
    config::Config,
    services::{
        Services,
        appservice::{Appservices, Registered},
        server_keys,
    },
    storage::StorageError,
    util,
};

/// Runs an admin command on a small runtime of its own.
pub fn block_on<F: std::future::Future<Output = Result<(), String>>>(future: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(future)
}

/// Opens the services on the configured data directory.
pub fn open(config: Config) -> Result<Arc<Services>, String> {
    let db = crate::services::open_db(&config).map_err(|e| match e {
        StorageError::Locked(dir) => {
            format!("the data directory {dir} is in use by a running hearth server; stop it first")
        }
        other => other.to_string(),
    })?;
    Services::build(config, db).map_err(|e| e.to_string())
}

fn read_password(source: &PasswordSource) -> Result<(String, bool), String> {
    if let Some(path) = &source.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            return Err(format!("{} holds no password on its first line", path.display()));
        }
        return Ok((line, false));
    }
    if source.random_password {
        return Ok((util::random_string(20), true));
    }
    eprintln!("Password (read from standard input, one line):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err("no password given (use --password-file or --random-password)".into());
    }
    Ok((line, false))
}

/// `hearth user create`.
pub async fn create_user(
    services: &Services,
    name: &str,
    admin: bool,
    password: &PasswordSource,
) -> Result<(), String> {
    let user_id =
        crate::services::appservice::client_server::check_available(services, name).map_err(|e| e.to_string())?;
    let (password, generated) = read_password(password)?;
    services
        .accounts
        .create(
            &user_id,
            Some(&password),
            admin,
            services.new_account_batch(&user_id).map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("created {user_id}{}", if admin { " (admin)" } else { "" });
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

fn existing_user(services: &Services, name: &str) -> Result<ruma::OwnedUserId, String> {
    services
        .accounts
        .resolve_local_user(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user {name} on this server"))
}

/// `hearth user reset-password`.
pub async fn reset_password(services: &Services, name: &str, password: &PasswordSource) -> Result<(), String> {
    let user_id = existing_user(services, name)?;
    if !services.accounts.is_active(&user_id).map_err(|e| e.to_string())? {
        return Err(format!("{user_id} is deactivated"));
    }
    let (password, generated) = read_password(password)?;
    let devices = services.device_ids(&user_id, None, None).map_err(|e| e.to_string())?;
    let mut batch = services.batch();
    services
        .sessions
        .queue_delete_devices(&mut batch, &user_id, None, None)
        .map_err(|e| e.to_string())?;
    services
        .accounts
        .set_password(&user_id, &password, batch)
        .await
        .map_err(|e| e.to_string())?;
    services
        .keys
        .devices_deleted(&services.rooms, &user_id, &devices)
        .await
        .map_err(|e| e.to_string())?;
    println!("password of {user_id} reset; all its sessions were logged out");
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

/// `hearth user deactivate`.
pub async fn deactivate_user(services: &Services, name: &str) -> Result<(), String> {
    let user_id = existing_user(services, name)?;
    services.deactivate_user(&user_id).await.map_err(|e| e.to_string())?;
    println!("deactivated {user_id}");
    Ok(())
}

/// Parses `30s`, `15m`, `12h`, `7d` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration such as 30m, 12h or 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        "w" => n * 7 * 86400,
        _ => {
            return Err(format!("\"{text}\" is not a duration such as 30m, 12h or 7d"));
        }
    };
    Ok(Duration::from_secs(seconds))
}

/// `hearth registration-token create`.
pub async fn create_token(
    services: &Services,
    token: Option<String>,
    uses: Option<u32>,
    expires_in: Option<&str>,
) -> Result<(), String> {
    let expires_ms = expires_in
        .map(parse_duration)
        .transpose()?
        .map(|d| util::now_ms() + d.as_millis() as u64);
    let info = services
        .registration
        .create_token(token, uses, expires_ms)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", info.token);
    if services.registration.mode() != crate::config::RegistrationMode::Token {
        eprintln!("note: registration.mode is not \"token\", so /register does not ask for tokens yet");
    }
    Ok(())
}

/// `hearth registration-token list`.
pub fn list_tokens(services: &Services) -> Result<(), String> {
    let tokens = services.registration.list_tokens().map_err(|e| e.to_string())?;
    if tokens.is_empty() {
        println!("no registration tokens");
    }
    for t in tokens {
        let uses = t.record.uses_allowed.map_or("unlimited".to_owned(), |n| n.to_string());
        let expiry = match t.record.expires_ms {
            None => "never expires".to_owned(),
            Some(ms) if ms <= util::now_ms() => "expired".to_owned(),
            Some(ms) => format!("expires in {}s", (ms - util::now_ms()) / 1000),
        };
        println!("{}\tused {}/{}\t{}", t.token, t.record.completed, uses, expiry);
    }
    Ok(())
}

/// `hearth registration-token delete`.
pub async fn delete_token(services: &Services, token: &str) -> Result<(), String> {
    match services
        .registration
        .delete_token(token)
        .await
        .map_err(|e| e.to_string())?
    {
        true => {
            println!("deleted {token}");
            Ok(())
        }
        false => Err(format!("no registration token {token}")),
    }
}

/// `hearth reports`: every abuse report, oldest first, one per line.
pub fn list_reports(services: &Services) -> Result<(), String> {
    let reports = services.reports.list().map_err(|e| e.to_string())?;
    if reports.is_empty() {
        println!("no reports");
    }
    for r in reports {
        let when = std::time::UNIX_EPOCH + Duration::from_millis(r.received_ms);
        let age = when.elapsed().map_or(0, |d| d.as_secs() / 60);
        let room = r.room_id.map(|room| format!(" in {room}")).unwrap_or_default();
        let reason = r.reason.unwrap_or_default();
        println!(
            "{age} min ago\t{} reported {} {}{room}\t{reason}",
            r.reporter, r.kind, r.target
        );
    }
    Ok(())
}

/// `hearth appservice list`: each configured service with its URL, sender and namespaces.
pub fn list_appservices(config: &Config) -> Result<(), String> {
    let services = Appservices::load(&config.appservice_registration_files, &config.server_name)?;
    if services.all().is_empty() {
        println!("no application services (appservices.registration_files is empty)");
    }
    for service in services.all() {
        let r = &service.registration;
        println!(
            "{}\turl={}\tsender={}\t({})",
            r.id,
            r.url.as_deref().unwrap_or("-"),
            service.sender,
            service.source
        );
        let kinds = [
            ("users", &r.namespaces.users),
            ("aliases", &r.namespaces.aliases),
            ("rooms", &r.namespaces.rooms),
        ];
        for (kind, list) in kinds {
            for n in list {
                let exclusive = if n.exclusive { "exclusive" } else { "shared" };
                println!("  {kind}\t{exclusive}\t{}", n.regex);
            }
        }
    }
    Ok(())
}

/// `hearth appservice check FILE`: "ok", or the first problem naming the file and field.
pub fn check_appservice(file: &Path, server_name: &str) -> Result<(), String> {
    let server_name =
        <&ruma::ServerName>::try_from(server_name).map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let service = Registered::read(file, server_name)?;
    println!(
        "ok: {} (id {}, sender {})",
        file.display(),
        service.id(),
        service.sender
    );
    Ok(())
}

/// `hearth media stats`.
pub fn media_stats(services: &Services) -> Result<(), String> {
    let s = services.media.stats().map_err(|e| e.to_string())?;
    println!("media: {} ({} bytes as uploaded)", s.media, s.logical_bytes);
    println!(
        "stored contents: {} ({} bytes after deduplication)",
        s.blobs, s.blob_bytes
    );
    println!("thumbnails: {} ({} bytes)", s.thumbnails, s.thumbnail_bytes);
    println!("pending uploads: {}", s.pending);
    println!("store size: {} bytes", s.blob_bytes + s.thumbnail_bytes);
    Ok(())
}

/// `hearth media purge`.
pub async fn media_purge(
    services: &Services,
    older_than_days: Option<u64>,
    user: Option<String>,
) -> Result<(), String> {
    use crate::services::media::housekeeping::PurgeFilter;
    let filter = match (older_than_days, user) {
        (Some(days), None) => PurgeFilter::UnusedForDays(days),
        (None, Some(user)) => PurgeFilter::User(
            ruma::UserId::parse(&user)
                .map_err(|e| format!("\"{user}\" is not a user id: {e}"))?
                .to_string(),
        ),
        _ => return Err("give exactly one of --older-than-days and --user".into()),
    };
    let (removed, freed) = services
        .media
        .purge(&filter, |done, total| {
            if done % 100 == 0 || done == total {
                eprintln!("purged {done}/{total}");
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    println!("purged {removed} media, freed {freed} bytes of content");
    Ok(())
}

/// `hearth generate-config`: the commented example with `server_name` set and a new signing key.
pub fn generate_config(server_name: &str, out: Option<&Path>) -> Result<(), String> {
    <&ruma::ServerName>::try_from(server_name)
        .map_err(|e| format!("\"{server_name}\" is not a valid server name: {e}"))?;
    let key_dir = out
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let key_path = key_dir.join(format!("{server_name}.signing.key"));
    for path in out.into_iter().chain([key_path.as_path()]) {
        if path.exists() {
            return Err(format!("{} already exists; not overwriting it", path.display()));
        }
    }
    let absolute_key = std::path::absolute(&key_path).unwrap_or(key_path.clone());
    let text = include_str!("../homeserver.example.toml")
        .replacen(
            "server_name = \"localhost\"",
            &format!("server_name = \"{server_name}\""),
            1,
        )
        .replacen(
            "# signing_key_path = \"/var/lib/hearth/signing.key\"",
            &format!("signing_key_path = \"{}\"", absolute_key.display()),
            1,
        )
        .replacen("# mode = \"token\"", "mode = \"token\"", 1);
    let key = server_keys::generate_key_file().map_err(|e| e.to_string())?;
    write_new(&key_path, &key, true)?;
    match out {
        Some(path) => {
            write_new(path, &text, false)?;
            eprintln!("wrote {} and the signing key {}", path.display(), key_path.display());
        }
        None => {
            print!("{text}");
            eprintln!("wrote the signing key {}", key_path.display());
        }
    }
    Ok(())
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}

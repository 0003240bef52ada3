//! Media benchmark (`cargo bench --bench media`): upload and download throughput for 1 MB and
//! 50 MB files, thumbnail latency (on demand and cached), and the server's resident memory
//! while 1 GB is uploaded in 50 MB files, measured on the real binary over loopback HTTP.
//! Prints a markdown table; no timing is asserted.
//!
//! Knobs (environment): `BENCH_SMALL_FILES` 1 MB files (default 50), `BENCH_LARGE_FILES` 50 MB
//! files (default 4), `BENCH_TOTAL_MB` for the memory run (default 1024), `BENCH_DURABLE`
//! (`false` turns off the WAL sync; default on, as deployed). With `HS_URL` (a loopback URL)
//! and `BENCH_SERVER_PID` it measures that server instead of starting Hearth, which is how
//! `benches/vs_synapse.sh media` compares with Synapse. The last line printed is the figures as
//! JSON.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{agent, median, register, status_mb};

mod support;

fn upload(agent: &ureq::Agent, base: &str, token: &str, bytes: &[u8], content_type: &str) -> String {
    let response = agent
        .post(format!("{base}/_matrix/media/v3/upload"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", content_type)
        .send(bytes)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.into_body().read_json().unwrap();
    body["content_uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("mxc://")
        .to_owned()
}

fn get(agent: &ureq::Agent, url: &str, token: &str) -> u64 {
    let response = agent
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}");
    std::io::copy(&mut response.into_body().into_reader(), &mut std::io::sink()).unwrap()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads then downloads `count` files of `size` bytes; returns (upload MB/s, download MB/s).
fn throughput(agent: &ureq::Agent, base: &str, token: &str, size: usize, count: usize, seed: u64) -> (f64, f64) {
    let mut data = noise(size, seed);
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        data[..8].copy_from_slice(&(seed * 1000 + i as u64).to_be_bytes());
        ids.push(upload(agent, base, token, &data, "application/octet-stream"));
    }
    let up = (size * count) as f64 / 1e6 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for id in &ids {
        let n = get(agent, &format!("{base}/_matrix/client/v1/media/download/{id}"), token);
        assert_eq!(n, size as u64);
    }
    let down = (size * count) as f64 / 1e6 / started.elapsed().as_secs_f64();
    (up, down)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("media: bench");
        return;
    }
    let env_num = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let small_files = env_num("BENCH_SMALL_FILES", 50);
    let large_files = env_num("BENCH_LARGE_FILES", 4);
    let total_mb = env_num("BENCH_TOTAL_MB", 1024);
    let tmp = tempfile::tempdir().unwrap();
    let (_server, base, pid) = match std::env::var("HS_URL") {
        Ok(url) => {
            let host = url.trim_start_matches("http://");
            assert!(
                host.starts_with("127.") || host.starts_with("[::1]"),
                "HS_URL must be loopback"
            );
            let pid = std::env::var("BENCH_SERVER_PID")
                .ok()
                .and_then(|p| p.parse().ok())
                .expect("BENCH_SERVER_PID names the server process with HS_URL");
            (None, url, pid)
        }
        Err(_) => {
            let durable = std::env::var("BENCH_DURABLE")
                .map_or(true, |v| v != "false")
                .to_string();
            let max_upload = (200u64 << 20).to_string();
            let env = [
                ("HEARTH_PASSWORDS__MEMORY_KIB", "64"),
                ("HEARTH_PASSWORDS__ITERATIONS", "1"),
                ("HEARTH_MEDIA__MAX_UPLOAD_SIZE", max_upload.as_str()),
                ("HEARTH_DATABASE__SYNC_WRITES", durable.as_str()),
                ("HEARTH_LOGGING__LEVEL", "warn,hearth=info"),
            ];
            let server = support::start(&tmp.path().join("data"), &env);
            let (base, pid) = (server.base.clone(), server.child.id());
            (Some(server), base, pid)
        }
    };
    let agent = agent();
    let token = register(&agent, &base, &format!("mediabench{}", std::process::id()));
    std::thread::sleep(Duration::from_secs(2));
    let idle = status_mb(pid, "VmRSS:");

    let (small_up, small_down) = throughput(&agent, &base, &token, 1 << 20, small_files, 1);
    let (large_up, large_down) = throughput(&agent, &base, &token, 50 << 20, large_files, 2);

    // Thumbnails of a 1600x1200 JPEG: made on demand (boxes larger than the pre-generated
    // 800x600, so each is decoded and resized), then cached.
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(1600, 1200, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 255) as u8])
    }));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let id = upload(&agent, &base, &token, jpeg.get_ref(), "image/jpeg");
    let thumb = |query: &str| {
        let started = Instant::now();
        get(
            &agent,
            &format!("{base}/_matrix/client/v1/media/thumbnail/{id}?{query}"),
            &token,
        );
        started.elapsed().as_secs_f64() * 1000.0
    };
    let on_demand = median(
        (0..9)
            .map(|i| thumb(&format!("width={}&height=700&method=scale", 900 + i)))
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(2)); // let the background pre-generation finish
    let cached = median((0..20).map(|_| thumb("width=96&height=96&method=crop")).collect());

    // Resident memory while `total_mb` is uploaded in 50 MB files.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(status_mb(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let before = status_mb(pid, "VmRSS:");
    let files = total_mb.div_ceil(50);
    let started = Instant::now();
    let mut data = noise(50 << 20, 3);
    for i in 0..files {
        data[..8].copy_from_slice(&(9_000_000 + i as u64).to_be_bytes());
        upload(&agent, &base, &token, &data, "application/octet-stream");
    }
    let bulk_rate = (files * 50) as f64 * 1.048_576 / started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let after = status_mb(pid, "VmRSS:");

    println!("| metric | value |");
    println!("|---|---|");
    println!("| upload, 1 MB files x {small_files}, sequential | {small_up:.1} MB/s |");
    println!("| download, 1 MB files x {small_files}, sequential | {small_down:.1} MB/s |");
    println!("| upload, 50 MB files x {large_files}, sequential | {large_up:.1} MB/s |");
    println!("| download, 50 MB files x {large_files}, sequential | {large_down:.1} MB/s |");
    println!("| thumbnail of a 1600x1200 JPEG, made on demand (median of 9) | {on_demand:.1} ms |");
    println!("| thumbnail, cached (median of 20) | {cached:.1} ms |");
    println!("| idle RSS after start | {idle:.1} MB |");
    println!(
        "| RSS uploading {} MB in 50 MB files: before / peak (sampled every 20 ms) / after | {before:.1} / {peak:.1} / {after:.1} MB |",
        files * 50
    );
    println!("| upload rate during that run | {bulk_rate:.1} MB/s |");
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let line = json!({
        "scenario": "media",
        "metrics": {
            "upload_1mb_mb_per_s": round(small_up), "download_1mb_mb_per_s": round(small_down),
            "upload_50mb_mb_per_s": round(large_up), "download_50mb_mb_per_s": round(large_down),
            "thumbnail_on_demand_ms": round(on_demand), "thumbnail_cached_ms": round(cached),
            "rss_idle_mb": round(idle), "rss_peak_above_idle_during_1gb_mb": round(peak - before),
        },
    });
    println!("{line}");
}

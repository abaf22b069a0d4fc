//! The example workload. Inside a veil sandbox it finds its secret at
//! /run/veil/secrets/api-key, fetches the same secret again through the
//! local API socket, and prints only a fingerprint of it, never the secret.
//! With `--stay` it then keeps running (until stopped), so the demo can show
//! what the host may and may not do to a running sandbox.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

/// FNV-1a 64: enough to show "derived from the secret" without a dependency.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// GET a path from the veil local API (HTTP/1.1 over a unix socket).
fn api_get(path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = UnixStream::connect("/run/veil/api.sock").map_err(|e| format!("connecting to /run/veil/api.sock: {e}"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: veil\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok((status, resp[split + 4..].to_vec()))
}

fn main() {
    let secret = match std::fs::read("/run/veil/secrets/api-key") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hello-secret: no secret at /run/veil/secrets/api-key: {e}");
            std::process::exit(1);
        }
    };
    println!("hello from inside the sandbox");
    println!("secret: {} bytes, fingerprint fnv1a64:{:016x}", secret.len(), fnv1a(&secret));
    match api_get("/info") {
        Ok((200, body)) => println!("local API /info: {}", String::from_utf8_lossy(&body)),
        Ok((code, body)) => println!("local API /info: HTTP {code}: {}", String::from_utf8_lossy(&body)),
        Err(e) => println!("local API: {e}"),
    }
    match api_get("/cdh/resource/default/secret/api-key") {
        Ok((200, body)) => println!(
            "secret fetched again through the local API: {}",
            if body == secret { "same fingerprint" } else { "DIFFERENT" }
        ),
        Ok((code, body)) => println!("local API resource: HTTP {code}: {}", String::from_utf8_lossy(&body)),
        Err(e) => println!("local API: {e}"),
    }
    if std::env::args().any(|a| a == "--stay") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

//! A minimal HTTP endpoint for probes and scraping: `GET /healthz` answers
//! 200 while the agent's runtime is alive, `/readyz` 200 once the node holds
//! its lease, wrote the subnet file and converged (503 and the reason
//! otherwise), `/metrics` the Prometheus text format, `/peers` the per-peer
//! overlay health as JSON (src/probe). A broken peer does not make the node
//! unready: `/readyz` is about this node's own data path (see
//! docs/configuration.md). Anything else is 404.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::telemetry::Telemetry;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `addr` and serves probes on a background task.
pub async fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    read_head(&mut sock, &mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = respond(path, &telemetry);
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// Reads a request's head (up to its blank line, at most `buf`'s size),
/// also when it comes in pieces: closing with unread request bytes would
/// reset the connection and could lose the response.
async fn read_head(sock: &mut tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = sock.read(&mut buf[n..]).await?;
        n += m;
        let head = &buf[..n];
        let done =
            head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
        if m == 0 || done {
            break;
        }
    }
    Ok(n)
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Status line, content type and body for a request path.
fn respond(path: &str, telemetry: &Telemetry) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match telemetry.not_ready_reason() {
            None => ("200 OK", TEXT, "ok\n".into()),
            Some(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
        },
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            telemetry.encode(),
        ),
        "/peers" => ("200 OK", "application/json", telemetry.peer_health.json()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        let t = Arc::new(Telemetry::new());
        let addr = serve("127.0.0.1:0".parse().unwrap(), t.clone())
            .await
            .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        // A request that comes in pieces is read whole before the answer.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.write_all(b"\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n"),
            "{out}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("no subnet lease yet\n"), "{r}");
        t.set_lease_held(true);
        t.set_subnet_file_written(true);
        t.set_converged(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("twill_leases"), "{m}");
    }
}

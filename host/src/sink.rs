//! `repeatd sink`: a tiny receiver for trying things out. It prints every
//! request it gets (method, path, query, headers, body) and answers 200, or
//! the status given by `--status`, by `?status=` in the URL or by an
//! `X-Sink-Status` header, so that a newcomer can watch a record fail and
//! then succeed.

use std::io::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;

/// Formats one request the way `repeatd sink` prints it.
pub fn describe(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let mut out = String::new();
    out.push_str(&format!("{method} {}\n", uri.path()));
    if let Some(query) = uri.query() {
        out.push_str(&format!("query: {query}\n"));
    }
    for (name, value) in headers {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push('\n');
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    out.push_str(&crate::xform::body_text(content_type, body));
    if !body.ends_with(b"\n") {
        out.push('\n');
    }
    out.push_str("----\n");
    out
}

async fn receive(
    axum::extract::State(default_status): axum::extract::State<StatusCode>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let text = describe(&method, &uri, &headers, &body);
    {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }
    let asked = uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("status=")))
        .or_else(|| headers.get("x-sink-status").and_then(|v| v.to_str().ok()))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok());
    let status = asked.unwrap_or(default_status);
    (
        status,
        if status.is_success() {
            "ok\n".to_owned()
        } else {
            format!("sink answers {status}\n")
        },
    )
}

/// Serves until the process is stopped, answering `status` unless a request
/// asks for another.
pub async fn run(listen: SocketAddr, status: u16) -> anyhow::Result<()> {
    let status = StatusCode::from_u16(status)
        .map_err(|_| anyhow::anyhow!("--status {status} is not an HTTP status"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("sink cannot listen on {listen}: {error}"))?;
    eprintln!(
        "repeatd sink listening on http://{}",
        listener.local_addr()?
    );
    let app = Router::new().fallback(receive).with_state(status);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_method_path_query_headers_and_body() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/xml".parse().unwrap());
        let uri: Uri = "/in?app_id=1".parse().unwrap();
        let text = describe(&Method::POST, &uri, &headers, b"<x/>");
        assert_eq!(
            text,
            "POST /in\nquery: app_id=1\ncontent-type: text/xml\n\n<x/>\n----\n"
        );
    }

    #[test]
    fn an_xml_body_is_printed_as_the_text_its_encoding_says() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/xml".parse().unwrap());
        let uri: Uri = "/in".parse().unwrap();
        let latin1 = b"<?xml version='1.0' encoding='ISO-8859-1'?><x>\xE7a</x>\n";
        let text = describe(&Method::POST, &uri, &headers, latin1);
        assert!(text.contains("<x>\u{e7}a</x>\n----"), "{text}");
    }
}

//! Talking to a running gateway over HTTP as devices and operators do:
//! submitting forms as a submitter, calling the admin API with a token,
//! listing records and waiting for them to settle. [`crate::Gateway`] (in
//! this process) and [`crate::Daemon`] (the built binary) both hand their
//! callers a [`Client`], so a test reads the same whichever runs the gateway.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::ADMIN_TOKEN;
use crate::wait::wait_for;

/// An HTTP client pointed at one gateway.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    /// `http`, or `https` for a gateway with `[tls]`.
    scheme: &'static str,
    http: reqwest::Client,
}

impl Client {
    /// A client of the gateway at `addr` (on loopback: never through a proxy).
    pub fn new(addr: SocketAddr) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("building an HTTP client");
        Client {
            addr,
            scheme: "http",
            http,
        }
    }

    /// A client of a gateway serving HTTPS (`[tls]`) at `addr`, over `http`
    /// (which must trust the gateway's certificate).
    pub fn https(addr: SocketAddr, http: reqwest::Client) -> Client {
        Client {
            addr,
            scheme: "https",
            http,
        }
    }

    /// Where the gateway listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// The underlying HTTP client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Submits a form as `danny:pw` (raw XML).
    pub async fn submit(&self, domain: &str, xml: &[u8], app_id: Option<&str>) -> (u16, String) {
        self.submit_as(domain, xml, app_id, ("danny", "pw"), "text/xml")
            .await
    }

    pub async fn submit_as(
        &self,
        domain: &str,
        xml: &[u8],
        app_id: Option<&str>,
        user: (&str, &str),
        content_type: &str,
    ) -> (u16, String) {
        let path = match app_id {
            Some(app) => format!("/a/{domain}/receiver/{app}"),
            None => format!("/a/{domain}/receiver"),
        };
        let response = self
            .http
            .post(self.url(&path))
            .basic_auth(user.0, Some(user.1))
            .header("content-type", content_type)
            .body(xml.to_vec())
            .send()
            .await
            .expect("submitting");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Calls the admin API with the admin token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(ADMIN_TOKEN, method, path, body).await
    }

    /// GETs `path` from the admin API with the admin token.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.api("GET", path, None).await
    }

    /// Calls the admin API with `token`; the answer as JSON (a JSON string
    /// holding the text when it is not JSON).
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.api_text_as(token, method, path, body).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Calls the admin API with `token`; the answer's text exactly as sent.
    pub async fn api_text_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method.parse().expect("method"), self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("JSON body"));
        }
        let response = request.send().await.expect("calling the API");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The domain's records (all of them, up to 10,000), as the admin sees them.
    pub async fn records(&self, domain: &str, query: &str) -> Vec<Value> {
        self.records_as(ADMIN_TOKEN, domain, query).await
    }

    /// The domain's records (all of them, up to 10,000), as `token` sees them.
    pub async fn records_as(&self, token: &str, domain: &str, query: &str) -> Vec<Value> {
        let (status, body) = self
            .api_as(
                token,
                "GET",
                &format!("/api/v1/domains/{domain}/records?limit=10000&{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "listing records: {body}");
        body["records"].as_array().cloned().unwrap_or_default()
    }

    /// Record `id` of the domain with its attempts, as the admin sees it;
    /// the API must answer 200.
    pub async fn record(&self, domain: &str, id: &str) -> Value {
        let (status, record) = self
            .get(&format!("/api/v1/domains/{domain}/records/{id}"))
            .await;
        assert_eq!(status, 200, "record {id}: {record}");
        record
    }

    /// Waits until every record of the domain matching `query` is in `state`
    /// and there are `n` of them; returns them (the last ones seen when
    /// `timeout` passes first).
    pub async fn wait_records(
        &self,
        domain: &str,
        query: &str,
        n: usize,
        state: &str,
        timeout: Duration,
    ) -> Vec<Value> {
        let settled = wait_for(timeout, || async {
            let records = self.records(domain, query).await;
            if records.len() == n && records.iter().all(|r| r["state"] == state) {
                Ok(records)
            } else {
                Err(records)
            }
        })
        .await;
        settled.unwrap_or_else(|last_seen| last_seen)
    }
}

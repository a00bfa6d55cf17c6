//! Console sessions: who signed in, kept on the server. The browser holds only
//! a random id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/console`; the session behind it carries the caller (admin, or one
//! domain's token holder), its anti-forgery token and when it expires.
//! Signing out removes it here, so the old cookie is worth nothing.
//!
//! Failed sign-ins are slowed down: each one waits longer than the last
//! (doubling, capped), and failures wait in single file, so guessing tokens
//! runs at one guess per delay however many connections a guesser opens. A
//! right token never waits. The count decays once no failure came for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, header};

use crate::clock::Clock;
use crate::endpoint::Caller;

/// The cookie's name.
pub const COOKIE: &str = "repeatd_console";
/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The first failed sign-in's delay; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest a failed sign-in waits.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// A failure count is forgotten after this long without a failure.
const FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(15 * 60);

/// One signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// The anti-forgery token every POST of this session must carry.
    pub csrf: String,
    expires_at: i64,
    /// What the last change did, shown once on the next page.
    notice: Option<String>,
}

/// The server's sessions and the sign-in throttle.
#[derive(Debug)]
pub struct Sessions {
    clock: Clock,
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<Failures>,
    /// Failed sign-ins answer one at a time.
    single_file: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    last_at: i64,
}

/// A random hex string of `bytes` bytes.
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the system's randomness");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub fn new(clock: Clock) -> Sessions {
        Sessions {
            clock,
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures::default()),
            single_file: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts a session for `caller`; returns its id (the cookie's value).
    pub fn start(&self, caller: Caller) -> String {
        let id = random_hex(32);
        let session = Session {
            caller,
            csrf: random_hex(32),
            expires_at: self.clock.after(LIFETIME),
            notice: None,
        };
        let mut live = self.live.lock().expect("sessions lock");
        let now = self.clock.now_micros();
        live.retain(|_, session| session.expires_at > now);
        live.insert(id.clone(), session);
        self.failures.lock().expect("sessions lock").count = 0;
        id
    }

    /// The live session the request's cookie names.
    pub fn find(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie_value(headers, COOKIE)?;
        let mut live = self.live.lock().expect("sessions lock");
        let session = live.get(id)?.clone();
        if session.expires_at <= self.clock.now_micros() {
            live.remove(id);
            return None;
        }
        Some((id.to_owned(), session))
    }

    /// Keeps `text` to show on the session's next page.
    pub fn notify(&self, id: &str, text: String) {
        if let Some(session) = self.live.lock().expect("sessions lock").get_mut(id) {
            session.notice = Some(text);
        }
    }

    /// The notice kept for the session, once.
    pub fn take_notice(&self, id: &str) -> Option<String> {
        self.live
            .lock()
            .expect("sessions lock")
            .get_mut(id)
            .and_then(|session| session.notice.take())
    }

    /// Ends a session on the server.
    pub fn end(&self, id: &str) {
        self.live.lock().expect("sessions lock").remove(id);
    }

    /// Waits out the delay a failed sign-in earns, in single file.
    pub async fn failed_sign_in(&self) {
        let _turn = self.single_file.lock().await;
        let delay = {
            let mut failures = self.failures.lock().expect("sessions lock");
            let now = self.clock.now_micros();
            if crate::clock::between(failures.last_at, now) > FAILURES_FORGOTTEN_AFTER {
                failures.count = 0;
            }
            failures.count = failures.count.saturating_add(1);
            failures.last_at = now;
            delay_after(failures.count)
        };
        self.clock.sleep(delay).await;
    }

    /// The `Set-Cookie` value that hands a session to the browser.
    pub fn cookie(id: &str, secure: bool) -> String {
        format!(
            "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
            LIFETIME.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that makes the browser forget it.
    pub fn expired_cookie() -> String {
        format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The delay the `n`-th failure in a row waits.
fn delay_after(n_failures: u32) -> Duration {
    let doublings = n_failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Access;

    fn admin() -> Caller {
        Caller {
            access: Access::Admin,
            own_domain: None,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value.parse().unwrap());
        headers
    }

    #[test]
    fn failed_sign_ins_wait_longer_each_time_up_to_a_cap() {
        assert_eq!(delay_after(1), Duration::from_millis(250));
        assert_eq!(delay_after(2), Duration::from_millis(500));
        assert_eq!(delay_after(4), Duration::from_secs(2));
        assert_eq!(delay_after(10), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_found_by_its_cookie_until_it_expires_or_ends() {
        let clock = Clock::starting_at(1_000_000);
        let sessions = Sessions::new(clock);
        let id = sessions.start(admin());
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        assert_eq!(sessions.find(&headers).unwrap().1.caller, admin());
        assert!(
            sessions
                .find(&with_cookie(&format!("{COOKIE}=guess")))
                .is_none()
        );
        tokio::time::advance(LIFETIME + Duration::from_secs(1)).await;
        assert!(sessions.find(&headers).is_none(), "expired");
        let id = sessions.start(admin());
        let headers = with_cookie(&format!("{COOKIE}={id}"));
        sessions.end(&id);
        assert!(sessions.find(&headers).is_none(), "ended");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_console() {
        let cookie = Sessions::cookie("abc", false);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
            "Max-Age=28800",
        ] {
            assert!(cookie.contains(part), "{cookie} lacks {part}");
        }
        assert!(Sessions::cookie("abc", true).ends_with("; Secure"));
    }
}

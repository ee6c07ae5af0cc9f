//! EKS web identity: keeps Bedrock's [`CredentialSlot`]s filled with temporary credentials
//! from STS `AssumeRoleWithWebIdentity` (providers.md §8.1).
//!
//! * An adapter whose only credentials are a web identity gets its slot from [`shared_slot`]:
//!   one slot per distinct [`WebIdentity`] (role, token file, session name, region, STS
//!   endpoint) for the life of the process. A config reload builds new adapters on the same
//!   slot, so it never starts a second refresher nor waits for new credentials.
//! * [`Refresher`], a background service, runs one task per slot. Each refresh re-reads the
//!   token file (the kubelet rotates projected service-account tokens), sends the unsigned STS
//!   call to `AWS_ENDPOINT_URL_STS`, `https://sts.{AWS_REGION}.amazonaws.com` or the global
//!   endpoint over Pingora's connector (rustls, platform roots), and swaps the answer in.
//! * The next refresh is 5 minutes before expiry, or halfway through the usable life of
//!   short-lived credentials ([`refresh_after`]). A failed refresh is retried with a jittered
//!   backoff from 1 s to 60 s ([`retry_after_failure`]) while the old credentials keep serving
//!   until they expire; the adapter then fails attempts (retryable, nothing sent) until a
//!   refresh succeeds, as it does before the first one.
//! * Neither the token, the secret key, the session token nor the access key id reaches a
//!   log line: STS error text is scrubbed of the token before it is logged.

use super::auth::{parse_sts_response, AwsCredentials, CredentialSlot, StsRequest, WebIdentity};
use super::EXPIRY_MARGIN;
use crate::dns::Resolver;
use crate::providers::{scrub_secret, BaseUrl};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

/// Long-lived credentials are refreshed this long before they expire (as AWS SDKs do).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Never refresh more often than this, whatever STS says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// STS sessions last at most 12 h; a later expiry is not believed.
const MAX_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// First retry after a failed refresh; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Connect (TCP and TLS) to STS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole STS call.
const STS_TIMEOUT: Duration = Duration::from_secs(20);
/// STS answers are a few KiB.
const MAX_STS_BODY: usize = 256 * 1024;

/// When to refresh credentials fetched at `now`: 5 minutes before `expires_at`, or, when
/// that leaves less than half of their usable life (the time before the adapter's expiry
/// margin), at that half. At least 1 s, at most 12 h; long-term credentials (no expiry) are
/// re-checked after 12 h.
pub fn refresh_after(now: SystemTime, expires_at: Option<SystemTime>) -> Duration {
    let Some(expires_at) = expires_at else {
        return MAX_REFRESH;
    };
    let left = expires_at.duration_since(now).unwrap_or_default();
    let before_expiry = left.saturating_sub(REFRESH_BEFORE);
    let half_usable = left.saturating_sub(EXPIRY_MARGIN) / 2;
    before_expiry
        .max(half_usable)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// The wait after the `failures`-th failed refresh in a row (1-based): 1 s doubling to 60 s,
/// plus up to a quarter more at random so replicas do not retry in step.
pub fn retry_after_failure(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() / 4.0)
}

// ---------------------------------------------------------------------------------------
// The registry of slots
// ---------------------------------------------------------------------------------------

struct Entry {
    slot: CredentialSlot,
    /// A refresher task owns this slot.
    running: bool,
}

/// Slots by web identity, and the signal that a new one needs a refresher.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<WebIdentity, Entry>>,
    wake: tokio::sync::Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<WebIdentity, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot for `identity`, created empty on first use.
    pub fn slot(&self, identity: &WebIdentity) -> CredentialSlot {
        let mut entries = self.lock();
        let entry = entries.entry(identity.clone()).or_insert_with(|| Entry {
            slot: CredentialSlot::default(),
            running: false,
        });
        let slot = entry.slot.clone();
        if !entry.running {
            drop(entries);
            self.wake.notify_one();
        }
        slot
    }

    /// The slots nobody refreshes yet, now marked as refreshed (each is returned once).
    pub fn take_unstarted(&self) -> Vec<(WebIdentity, CredentialSlot)> {
        self.lock()
            .iter_mut()
            .filter(|(_, e)| !e.running)
            .map(|(w, e)| {
                e.running = true;
                (w.clone(), e.slot.clone())
            })
            .collect()
    }
}

/// The process-wide registry.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The process-wide slot for `identity`; the [`Refresher`] service fills it.
pub fn shared_slot(identity: &WebIdentity) -> CredentialSlot {
    registry().slot(identity)
}

/// The background service that refreshes every slot handed out by [`shared_slot`]: one task
/// per web identity, started when its slot is first asked for, running until shutdown.
pub struct Refresher;

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let registry = registry();
        let mut tasks = tokio::task::JoinSet::new();
        // Which slot each task refreshes, to restart a task that died (a panic).
        let mut owners = HashMap::new();
        loop {
            for (identity, slot) in registry.take_unstarted() {
                let task = Task::new(identity.clone(), slot.clone());
                owners.insert(tasks.spawn(task.run()).id(), (identity, slot));
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = registry.wake.notified() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match &done {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    if let Some((identity, slot)) = owners.remove(&id) {
                        log::error!(
                            "bedrock web identity: the refresher for role {} stopped; restarting it",
                            identity.role_arn
                        );
                        let task = Task::new(identity.clone(), slot.clone());
                        let restart = async move {
                            tokio::time::sleep(MAX_BACKOFF).await;
                            task.run().await
                        };
                        owners.insert(tasks.spawn(restart).id(), (identity, slot));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One refresher
// ---------------------------------------------------------------------------------------

/// Keeps one slot filled.
pub struct Task {
    identity: WebIdentity,
    slot: CredentialSlot,
    connector: Connector,
    resolver: Resolver,
    failures: u32,
}

impl Task {
    pub fn new(identity: WebIdentity, slot: CredentialSlot) -> Task {
        Task {
            identity,
            slot,
            connector: Connector::new(None),
            resolver: Resolver::default(),
            failures: 0,
        }
    }

    /// Refreshes for ever.
    pub async fn run(mut self) {
        loop {
            let wait = self.step().await;
            tokio::time::sleep(wait).await;
        }
    }

    /// One refresh: fills the slot on success, keeps what it holds on failure. Returns how
    /// long to wait before the next one.
    pub async fn step(&mut self) -> Duration {
        let role = &self.identity.role_arn;
        match self.fetch().await {
            Ok(creds) => {
                let now = SystemTime::now();
                let wait = refresh_after(now, creds.expires_at);
                let valid_for = creds
                    .expires_at
                    .and_then(|t| t.duration_since(now).ok())
                    .unwrap_or_default();
                let first = self.slot.load().is_none() || self.failures > 0;
                self.slot.store(Some(Arc::new(creds)));
                self.failures = 0;
                let line = format!(
                    "bedrock web identity: credentials for role {role} from {} valid for {}s; next refresh in {}s",
                    self.identity.sts_base_url(),
                    valid_for.as_secs(),
                    wait.as_secs()
                );
                if first {
                    log::info!("{line}");
                } else {
                    log::debug!("{line}");
                }
                wait
            }
            Err(e) => {
                self.failures += 1;
                let wait = retry_after_failure(self.failures);
                let current = self.slot.load_full();
                let now = SystemTime::now();
                let keeping = match current.as_deref() {
                    Some(c) if !c.expired(now, EXPIRY_MARGIN) => {
                        let left = c
                            .expires_at
                            .and_then(|t| t.duration_since(now).ok())
                            .unwrap_or_default();
                        format!(
                            "the current credentials stay in use ({}s left)",
                            left.as_secs()
                        )
                    }
                    _ => "no usable credentials: bedrock attempts fail until it succeeds".into(),
                };
                log::warn!(
                    "bedrock web identity: refreshing credentials for role {role} failed ({e}); {keeping}; retrying in {}ms",
                    wait.as_millis()
                );
                wait
            }
        }
    }

    /// Reads the token file and asks STS for credentials.
    async fn fetch(&self) -> Result<AwsCredentials, String> {
        let file = &self.identity.token_file;
        let path = file.clone();
        let token = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|e| format!("cannot read the token file {file}: {e}"))?
            .map_err(|e| format!("cannot read the token file {file}: {e}"))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("the token file {file} is empty"));
        }
        let req = self.identity.sts_request(token, None);
        let result = tokio::time::timeout(STS_TIMEOUT, self.send(&req))
            .await
            .unwrap_or_else(|_| Err(format!("STS did not answer within {STS_TIMEOUT:?}")));
        let scrub = |e: String| scrub_secret(&e, token);
        let (status, body) = result.map_err(scrub)?;
        match parse_sts_response(&body) {
            Ok(creds) if (200..300).contains(&status) => Ok(creds),
            Ok(_) => Err(format!("STS answered HTTP {status}")),
            Err(e) if body.starts_with(b"<") || (200..300).contains(&status) => {
                Err(scrub(format!("HTTP {status}: {e}")))
            }
            Err(_) => Err(format!("STS answered HTTP {status}")),
        }
    }

    /// One HTTP/1.1 exchange with STS: the status and the body.
    async fn send(&self, req: &StsRequest) -> Result<(u16, Bytes), String> {
        let base = BaseUrl::parse(&req.base_url)?;
        let addr = self.resolver.resolve(&base.host, base.port).await?;
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.total_connection_timeout = Some(CONNECT_TIMEOUT);
        let host = base.host_header();
        let (mut up, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        up.set_read_timeout(Some(STS_TIMEOUT));
        up.set_write_timeout(Some(STS_TIMEOUT));
        let path = format!("{}{}", base.path, req.path);
        let failed = |e: Box<pingora::Error>| format!("STS call to {host}: {e}");
        let mut head =
            RequestHeader::build(req.method, path.as_bytes(), Some(req.headers.len() + 3))
                .map_err(failed)?;
        head.insert_header("host", &host).map_err(failed)?;
        head.insert_header("user-agent", concat!("llmux/", env!("CARGO_PKG_VERSION")))
            .map_err(failed)?;
        for (k, v) in &req.headers {
            head.insert_header(k.clone(), v.as_str()).map_err(failed)?;
        }
        head.insert_header("content-length", req.body.len().to_string())
            .map_err(failed)?;
        up.write_request_header(Box::new(head))
            .await
            .map_err(failed)?;
        up.write_request_body(req.body.clone(), true)
            .await
            .map_err(failed)?;
        up.finish_request_body().await.map_err(failed)?;
        up.read_response_header().await.map_err(failed)?;
        let status = up.response_header().map_or(0, |h| h.status.as_u16());
        let mut body = BytesMut::new();
        while let Some(chunk) = up.read_response_body().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_STS_BODY {
                return Err(format!(
                    "the STS answer is larger than {MAX_STS_BODY} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn refresh_five_minutes_before_expiry_or_at_half_life() {
        let now = at(0);
        let after = |secs: u64| refresh_after(now, Some(at(secs))).as_secs();
        assert_eq!(after(3600), 3300, "1 h: 5 min before expiry");
        assert_eq!(after(900), 600, "15 min (STS minimum): 5 min before");
        assert_eq!(after(600), 300);
        // Short-lived: half of the time before the adapter's 60 s margin, so fresh
        // credentials are in the slot well before the old ones stop being used.
        assert_eq!(after(300), 120);
        assert_eq!(after(64), 2);
        // The two rules meet at 9 minutes: no jump in between.
        assert_eq!(after(540), 240);
        // Already (nearly) expired: soon, never in a busy loop.
        assert_eq!(after(61), 1);
        assert_eq!(refresh_after(at(10), Some(at(0))), MIN_REFRESH);
        // Unbelievable expiries are capped; long-term keys are re-checked twice a day.
        assert_eq!(refresh_after(now, Some(at(100 * 3600))), 12 * HOUR);
        assert_eq!(refresh_after(now, None), 12 * HOUR);
    }

    #[test]
    fn retries_back_off_with_jitter_up_to_a_minute() {
        for (n, base) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)] {
            for _ in 0..20 {
                let d = retry_after_failure(n);
                let base = Duration::from_secs(base);
                assert!(d >= base && d <= base + base / 4, "{n}: {d:?}");
            }
        }
    }

    fn identity(role: &str) -> WebIdentity {
        WebIdentity {
            role_arn: role.into(),
            token_file: "/var/run/secrets/token".into(),
            session_name: "llmux".into(),
            region: Some("us-east-1".into()),
            sts_endpoint: None,
        }
    }

    #[test]
    fn one_slot_and_one_refresher_per_identity() {
        let r = Registry::default();
        let a1 = r.slot(&identity("arn:a"));
        let a2 = r.slot(&identity("arn:a"));
        assert!(Arc::ptr_eq(&a1, &a2), "a reload gets the same slot");
        let b = r.slot(&identity("arn:b"));
        assert!(!Arc::ptr_eq(&a1, &b));
        let mut started = r.take_unstarted();
        started.sort_by(|x, y| x.0.role_arn.cmp(&y.0.role_arn));
        assert_eq!(started.len(), 2);
        assert!(Arc::ptr_eq(&started[0].1, &a1));
        // Asking again (a reload) starts nothing new.
        let _ = r.slot(&identity("arn:a"));
        assert!(r.take_unstarted().is_empty());
        let c = r.slot(&identity("arn:c"));
        let started = r.take_unstarted();
        assert_eq!(started.len(), 1);
        assert!(Arc::ptr_eq(&started[0].1, &c));
    }

    /// A fake STS on 127.0.0.1: answers each call with the next canned response and
    /// records the request bodies.
    async fn fake_sts(answers: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let request = loop {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break text;
                        }
                    }
                };
                log.lock().unwrap().push(request);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        (url, seen)
    }

    fn sts_ok(key: &str, expires_in: Duration) -> (u16, String) {
        let ts = crate::clock::rfc3339(SystemTime::now() + expires_in);
        (
            200,
            format!(
                "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                 <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>secret-{key}</SecretAccessKey>\
                 <SessionToken>token-{key}</SessionToken><Expiration>{ts}</Expiration>\
                 </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
            ),
        )
    }

    fn temp_token(contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "llmux-web-identity-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[tokio::test]
    async fn refresh_fills_the_slot_rereads_the_token_and_keeps_creds_on_failure() {
        let denied = r#"<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>bad jwt-two</Message></Error></ErrorResponse>"#;
        let (url, seen) = fake_sts(vec![
            sts_ok("ASIAONE", HOUR),
            (400, denied.to_owned()),
            (503, "Service Unavailable".to_owned()),
            sts_ok("ASIATWO", Duration::from_secs(120)),
        ])
        .await;
        let token = temp_token("jwt-one\n");
        let w = WebIdentity {
            token_file: token.display().to_string(),
            sts_endpoint: Some(url),
            ..identity("arn:aws:iam::123456789012:role/llmux")
        };
        let slot = CredentialSlot::default();
        let mut task = Task::new(w, slot.clone());

        let wait = task.step().await;
        let c = slot.load_full().expect("filled");
        assert_eq!(c.access_key_id, "ASIAONE");
        assert_eq!(c.secret_access_key, "secret-ASIAONE");
        assert_eq!(c.session_token.as_deref(), Some("token-ASIAONE"));
        assert!(
            wait > Duration::from_secs(3280) && wait <= Duration::from_secs(3300),
            "{wait:?}"
        );

        // The token file is read again on every refresh (Kubernetes rotates it).
        std::fs::write(&token, "jwt-two").unwrap();
        let wait = task.step().await;
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1250));
        let wait = task.step().await;
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2500));
        assert_eq!(
            slot.load_full().unwrap().access_key_id,
            "ASIAONE",
            "valid credentials stay in use while refreshes fail"
        );
        let wait = task.step().await;
        assert_eq!(slot.load_full().unwrap().access_key_id, "ASIATWO");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(task.failures, 0);

        let bodies = seen.lock().unwrap().clone();
        assert_eq!(bodies.len(), 4);
        assert!(
            bodies[0].starts_with("POST / HTTP/1.1\r\n"),
            "{}",
            bodies[0]
        );
        assert!(bodies[0]
            .to_ascii_lowercase()
            .contains("content-type: application/x-www-form-urlencoded"));
        assert!(bodies[0].contains("Action=AssumeRoleWithWebIdentity&"));
        assert!(bodies[0].contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fllmux"));
        assert!(
            bodies[0].ends_with("&WebIdentityToken=jwt-one"),
            "{}",
            bodies[0]
        );
        assert!(bodies[1].ends_with("&WebIdentityToken=jwt-two"));
        assert!(bodies[3].ends_with("&WebIdentityToken=jwt-two"));
        let _ = std::fs::remove_file(token);
    }

    #[tokio::test]
    async fn failures_name_the_cause_without_the_token() {
        let (url, _) = fake_sts(vec![(
            403,
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>not authorized for jwt-secret</Message></Error></ErrorResponse>".into(),
        )])
        .await;
        let token = temp_token("jwt-secret");
        let w = WebIdentity {
            token_file: token.display().to_string(),
            sts_endpoint: Some(url),
            ..identity("arn:r")
        };
        let task = Task::new(w.clone(), CredentialSlot::default());
        let e = task.fetch().await.unwrap_err();
        assert!(
            e.contains("AccessDenied") && !e.contains("jwt-secret"),
            "{e}"
        );
        std::fs::write(&token, " \n").unwrap();
        let e = task.fetch().await.unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        let _ = std::fs::remove_file(&token);
        let e = task.fetch().await.unwrap_err();
        assert!(e.contains("cannot read the token file"), "{e}");
        // Nobody listening.
        std::fs::write(&token, "jwt").unwrap();
        let closed = WebIdentity {
            sts_endpoint: Some("http://127.0.0.1:1".into()),
            ..w
        };
        let e = Task::new(closed, CredentialSlot::default())
            .fetch()
            .await
            .unwrap_err();
        assert!(e.contains("cannot connect to 127.0.0.1:1"), "{e}");
        let _ = std::fs::remove_file(&token);
    }
}

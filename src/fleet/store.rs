//! The Redis side of shared state: key names, the two server-side scripts, and every call
//! with its deadline. Nothing here runs on the request path; callers are the fleet sync and
//! the probe service.

use crate::budget::{PlannedSync, SyncOp, SyncResult};
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Settles debts, claims and releases for many meters in one atomic call. `KEYS[1]` is the
/// epoch key and `ARGV[1]` the epoch the caller knows: if Redis lost its data since
/// (another epoch, or none), nothing is applied and `{-1}` comes back, so no claim lands
/// in a counter that restarted from zero before the caller re-adds what it had. Then for
/// each further key, five arguments: op (`c` claim, `r` release), debt or units, want,
/// limit, TTL ms. Returns (granted, counter after) per key.
const SYNC_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local out = {}
for i = 2, #KEYS do
  local b = 1 + (i - 2) * 5
  local op, a = ARGV[b + 1], tonumber(ARGV[b + 2])
  local want, limit = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  local g = 0
  if op == 'c' then
    c = c + a
    g = math.max(0, math.min(want, limit - c))
    c = c + g
  else
    c = math.max(0, c - a)
  end
  redis.call('SET', KEYS[i], string.format('%.0f', c), 'PX', ARGV[b + 5])
  out[#out + 1] = g
  out[#out + 1] = c
end
return out
";

/// A lease: `KEYS[1]` taken by `ARGV[1]` for `ARGV[2]` ms unless someone else holds it.
/// 1 when the caller holds it.
const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return 0
";

/// Redis key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A random value written once into a fresh Redis: when it changes or disappears, the
    /// data was lost (a restart without persistence) and counters must be re-added.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The fleet counter of one meter in one period.
    pub fn meter(&self, p: &PlannedSync) -> String {
        format!(
            "{}:ledger:{}:{}:{}",
            self.prefix,
            p.key,
            p.metric.as_str(),
            p.period
        )
    }

    /// The last breaker event of an endpoint (`open <until> <opened>` or `closed <at>`).
    pub fn breaker(&self, endpoint: &str) -> String {
        format!("{}:breaker:{endpoint}", self.prefix)
    }

    /// The last probe verdict of an endpoint (`<unix ms> <1|0> <replica>`).
    pub fn health(&self, endpoint: &str) -> String {
        format!("{}:health:{endpoint}", self.prefix)
    }

    /// Who may probe an endpoint in this interval.
    pub fn probe_lease(&self, endpoint: &str) -> String {
        format!("{}:probe:{endpoint}", self.prefix)
    }

    /// Who may send an endpoint's half-open trial.
    pub fn trial_lease(&self, endpoint: &str) -> String {
        format!("{}:trial:{endpoint}", self.prefix)
    }
}

/// Why a Redis call did not answer.
#[derive(Debug)]
pub enum StoreError {
    /// Past the deadline.
    Timeout,
    /// Refused, reset, or an error reply (the text never holds the URL).
    Redis(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("redis call timed out"),
            StoreError::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

/// One connection (multiplexed, reconnecting) with a deadline on every call.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    deadline: Duration,
    /// The password in the URL, scrubbed from every error text.
    secret: String,
}

/// A redis error as text, without the password.
fn describe(e: &redis::RedisError, secret: &str) -> StoreError {
    StoreError::Redis(crate::providers::scrub_secret(&e.to_string(), secret))
}

/// The password part of a `redis://user:pass@host` URL ("" when there is none).
fn password_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let userinfo = rest.split_once('@').map_or("", |(u, _)| u);
    userinfo
        .split_once(':')
        .map_or(userinfo, |(_, p)| p)
        .to_owned()
}

impl Store {
    /// Connects to `url` within `deadline` (the connection then reconnects by itself, with
    /// backoff, whenever it breaks).
    pub async fn connect(url: &str, deadline: Duration) -> Result<Store, StoreError> {
        let secret = password_of(url);
        let client = redis::Client::open(url).map_err(|e| describe(&e, &secret))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadline))
            .set_response_timeout(Some(deadline))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            deadline * 3,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(|e| describe(&e, &secret))?;
        Ok(Store {
            conn,
            deadline,
            secret,
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.deadline, f)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|e| describe(&e, &self.secret))
    }

    /// The current epoch, creating one (`fresh`) when Redis has none.
    pub async fn epoch(&self, keys: &Keys, fresh: &str) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.epoch())
            .arg(fresh)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(keys.epoch());
        let (epoch,): (Option<String>,) = self.run(pipe.query_async(&mut conn)).await?;
        Ok(epoch.unwrap_or_else(|| fresh.to_owned()))
    }

    /// Runs planned ledger syncs atomically. `None`: the epoch moved (data lost), nothing
    /// applied.
    pub async fn sync_ledger(
        &self,
        keys: &Keys,
        epoch: &str,
        plan: &[PlannedSync],
    ) -> Result<Option<Vec<SyncResult>>, StoreError> {
        if plan.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SYNC_SCRIPT).arg(plan.len() + 1).arg(keys.epoch());
        for p in plan {
            cmd.arg(keys.meter(p));
        }
        cmd.arg(epoch);
        for p in plan {
            let (op, a, want, limit) = match p.op {
                SyncOp::Claim { debt, want, limit } => ("c", debt, want, limit),
                SyncOp::Release { units } => ("r", units, 0, 0),
            };
            // Counters outlive their period by a margin, so late settlements still land.
            let ttl_ms = (p.metric.period_secs() + 3_600) * 1000;
            cmd.arg(op).arg(a).arg(want).arg(limit).arg(ttl_ms);
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = self.run(cmd.query_async(&mut conn)).await?;
        if out.first() == Some(&-1) && out.len() == 1 {
            return Ok(None);
        }
        Ok(Some(
            out.chunks_exact(2)
                .map(|c| SyncResult {
                    granted: c[0],
                    fleet: c[1],
                })
                .collect(),
        ))
    }

    /// Writes `sets` ((key, value, ttl)) and reads `gets`, in one round trip.
    pub async fn exchange(
        &self,
        sets: &[(String, String, Duration)],
        gets: &[String],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut pipe = redis::pipe();
        for (key, value, ttl) in sets {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        if gets.is_empty() {
            let mut conn = self.conn.clone();
            let () = self.run(pipe.query_async(&mut conn)).await?;
            return Ok(Vec::new());
        }
        pipe.cmd("MGET").arg(gets);
        let mut conn = self.conn.clone();
        let (values,): (Vec<Option<String>>,) = self.run(pipe.query_async(&mut conn)).await?;
        Ok(values)
    }

    /// Takes `key` for `ttl` if nobody else holds it: true when this replica holds it
    /// (newly, or still from before).
    pub async fn take_lease(
        &self,
        key: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LEASE_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(replica)
            .arg(ttl.as_millis().max(1) as u64);
        let held: i64 = self.run(cmd.query_async(&mut conn)).await?;
        Ok(held == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_found_for_scrubbing() {
        assert_eq!(password_of("redis://:s3cret@h:6379/0"), "s3cret");
        assert_eq!(password_of("rediss://user:pw@h"), "pw");
        assert_eq!(password_of("redis://h:6379"), "");
    }

    #[test]
    fn key_names() {
        let k = Keys::new("llmux");
        let p = PlannedSync {
            key: "provider:gemini".into(),
            metric: crate::budget::Metric::RequestsPerDay,
            period: 20454,
            op: SyncOp::Release { units: 1 },
        };
        assert_eq!(k.meter(&p), "llmux:ledger:provider:gemini:rpd:20454");
        assert_eq!(k.breaker("a/m"), "llmux:breaker:a/m");
    }
}

//! The Redis side: records under the module's prefix, the expiry index (a
//! sorted set of names scored by notAfter) and the invalidation channel
//! the module's workers listen on.

use std::collections::HashMap;
use std::time::Duration;

use dyncert_core::fetch::{check_redis_url, redact_redis_url};
use dyncert_core::record::Form;
use redis::{Commands, Connection};

use crate::cert::{leaf_of, not_after_of, record_name, Prepared};
use crate::error::CliError;

/// Bound on connecting and on each command: a CLI must not hang on a
/// dead or stopped Redis.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per SCAN step and per index write of `index rebuild`.
const BATCH: usize = 1000;

/// Where records, the index and the channel are (the module's names).
pub struct Keys {
    pub prefix: String,
    /// `None`: `off`, nothing is published.
    pub channel: Option<String>,
    /// `None`: `off`, the index is not kept.
    pub index: Option<String>,
}

pub struct Store {
    conn: Connection,
    keys: Keys,
}

/// What `index rebuild` found.
pub struct Rebuilt {
    pub indexed: usize,
    /// Keys under the prefix without a readable certificate (or not a
    /// record name).
    pub skipped: usize,
}

impl Store {
    /// Connects to `url` (checked as `dyncert_redis` checks it; the
    /// password never reaches a message).
    pub fn connect(url: &str, keys: Keys) -> Result<Store, CliError> {
        let shown = redact_redis_url(url);
        check_redis_url(url)
            .map_err(|e| CliError::Input(format!("invalid Redis URL \"{shown}\": {e}")))?;
        let fail = |e: redis::RedisError| CliError::Redis(format!("Redis at {shown}: {e}"));
        let client = redis::Client::open(url).map_err(fail)?;
        let conn = client.get_connection_with_timeout(TIMEOUT).map_err(fail)?;
        conn.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
        conn.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
        Ok(Store { conn, keys })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.keys.prefix)
    }

    /// The index key, or a clear refusal when it is `off`.
    fn index(&self) -> Result<&str, CliError> {
        self.keys
            .index
            .as_deref()
            .ok_or_else(|| CliError::Input("the expiry index is off (--index off)".into()))
    }

    /// Replaces the record and its index entry in one transaction.
    pub fn put(&mut self, p: &Prepared) -> Result<(), CliError> {
        let key = self.key(&p.name);
        let mut pipe = redis::pipe();
        // DEL first: policy fields (and a write-back's TTL) of an older
        // record must not linger.
        pipe.atomic().del(&key).ignore();
        let hset = pipe.cmd("HSET").arg(&key);
        for (field, value) in &p.fields {
            hset.arg(*field).arg(value.as_slice());
        }
        hset.ignore();
        if let Some(index) = &self.keys.index {
            pipe.zadd(index, &p.name, p.not_after).ignore();
        }
        pipe.query::<()>(&mut self.conn)?;
        Ok(())
    }

    /// True when the stored record holds exactly `p`'s fields and the
    /// index has its notAfter: writing it again would change nothing.
    pub fn is_current(&mut self, p: &Prepared) -> Result<bool, CliError> {
        let stored = self.fields(&p.name)?;
        if !p.same_fields(&stored) {
            return Ok(false);
        }
        match &self.keys.index {
            Some(index) => {
                let score: Option<f64> = self.conn.zscore(index, &p.name)?;
                Ok(score == Some(p.not_after as f64))
            }
            None => Ok(true),
        }
    }

    /// Every field of the record stored for `name` (empty: none).
    pub fn fields(&mut self, name: &str) -> Result<HashMap<String, Vec<u8>>, CliError> {
        let key = self.key(name);
        Ok(self.conn.hgetall(key)?)
    }

    /// Deletes the record and its index entry; false when neither was
    /// there.
    pub fn delete(&mut self, name: &str) -> Result<bool, CliError> {
        let key = self.key(name);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        if let Some(index) = &self.keys.index {
            pipe.zrem(index, name);
        } else {
            pipe.cmd("ECHO").arg(0);
        }
        let (deleted, removed): (i64, i64) = pipe.query(&mut self.conn)?;
        Ok(deleted > 0 || removed > 0)
    }

    /// Publishes `target` (a name, `*.parent` or `*`) on the invalidation
    /// channel; the number of listeners that got it, `None` when the
    /// channel is off.
    pub fn invalidate(&mut self, target: &str) -> Result<Option<i64>, CliError> {
        match &self.keys.channel {
            Some(channel) => Ok(Some(self.conn.publish(channel, target)?)),
            None => Ok(None),
        }
    }

    /// A plain string value (`issue`'s ACME account), `None` when absent.
    pub fn get_string(&mut self, key: &str) -> Result<Option<String>, CliError> {
        Ok(self.conn.get(key)?)
    }

    /// Sets a plain string value without expiry.
    pub fn set_string(&mut self, key: &str, value: &str) -> Result<(), CliError> {
        let _: () = self.conn.set(key, value)?;
        Ok(())
    }

    /// Sets `key` to `value` for `ttl` seconds (an HTTP-01 answer: it must
    /// not outlive the validation if the cleanup never runs).
    pub fn set_expiring(&mut self, key: &str, value: &str, ttl: u64) -> Result<(), CliError> {
        let _: () = self.conn.set_ex(key, value, ttl)?;
        Ok(())
    }

    /// Deletes plain keys (challenge answers).
    pub fn delete_keys(&mut self, keys: &[String]) -> Result<(), CliError> {
        if !keys.is_empty() {
            let _: () = self.conn.del(keys)?;
        }
        Ok(())
    }

    /// The channel invalidations go to.
    pub fn channel(&self) -> Option<&str> {
        self.keys.channel.as_deref()
    }

    /// Names in the index with their notAfter, soonest first, up to
    /// `until` (UNIX seconds) when given.
    pub fn expiring(&mut self, until: Option<i64>) -> Result<Vec<(String, i64)>, CliError> {
        let index = self.index()?.to_owned();
        let max = match until {
            Some(t) => t.to_string(),
            None => "+inf".to_owned(),
        };
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(max)
            .arg("WITHSCORES")
            .query(&mut self.conn)?;
        Ok(entries.into_iter().map(|(n, s)| (n, s as i64)).collect())
    }

    /// Rebuilds the index from the records under the prefix (SCAN, never
    /// KEYS), into a temporary key renamed over the index at the end, so
    /// readers never see it half built.
    pub fn rebuild_index(&mut self) -> Result<Rebuilt, CliError> {
        let index = self.index()?.to_owned();
        let temp = format!("{index}:rebuild:{}", std::process::id());
        let pattern = format!("{}*", glob_escape(&self.keys.prefix));
        let _: () = self.conn.del(&temp)?;
        let mut done = Rebuilt {
            indexed: 0,
            skipped: 0,
        };
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query(&mut self.conn)?;
            let entries = self.expiries(&keys, &temp, &index)?;
            done.skipped += keys.len() - entries.len();
            if !entries.is_empty() {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&temp);
                for (name, not_after) in &entries {
                    zadd.arg(*not_after).arg(name);
                }
                let _: () = zadd.query(&mut self.conn)?;
                done.indexed += entries.len();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if done.indexed > 0 {
            let _: () = self.conn.rename(&temp, &index)?;
        } else {
            let _: () = self.conn.del(&index)?;
        }
        Ok(done)
    }

    /// The (name, notAfter) of each key that is a record with a readable
    /// leaf (the DER form first, as the module reads it).
    fn expiries(
        &mut self,
        keys: &[String],
        temp: &str,
        index: &str,
    ) -> Result<Vec<(String, i64)>, CliError> {
        let prefix = self.keys.prefix.clone();
        // Only hashes: with an empty prefix the index itself matches, and
        // HMGET on another type fails the whole pipeline.
        let mut types = redis::pipe();
        for k in keys {
            types.cmd("TYPE").arg(k);
        }
        let kinds: Vec<String> = types.query(&mut self.conn)?;
        let hashes: Vec<&String> = keys
            .iter()
            .zip(&kinds)
            .filter(|(k, t)| t.as_str() == "hash" && k.as_str() != temp && k.as_str() != index)
            .map(|(k, _)| k)
            .collect();
        let mut reads = redis::pipe();
        for k in &hashes {
            reads.cmd("HMGET").arg(k.as_str()).arg("crt_der").arg("crt");
        }
        let values: Vec<CrtFields> = reads.query(&mut self.conn)?;
        let mut out = Vec::new();
        for (key, (der, pem)) in hashes.iter().zip(values) {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            // A key the module never looks up (not a normalised name) is
            // not a record.
            if record_name(name).ok().as_deref() != Some(name) {
                continue;
            }
            let name = name.to_owned();
            let leaf = der
                .filter(|d| !d.is_empty())
                .and_then(|d| leaf_of(&d, Form::Der))
                .or_else(|| pem.and_then(|p| leaf_of(&p, Form::Pem)));
            if let Some(not_after) = leaf.as_ref().and_then(not_after_of) {
                out.push((name, not_after));
            }
        }
        Ok(out)
    }
}

/// A record's `crt_der` and `crt`, as HMGET returns them.
type CrtFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// `prefix` as a SCAN MATCH pattern that matches it literally.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("dyncert:cert:"), "dyncert:cert:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}

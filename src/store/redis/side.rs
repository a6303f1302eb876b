//! What other modules keep in Redis besides the cache: runtime flag flips
//! (`fg:flags`) and monitoring buckets (`fg:mon:…`; `{fg}:…` on a Redis
//! Cluster, in the log's slot, so one pipeline reaches them all). Off the
//! request path: its own, longer timeout, and never a reason to mark Redis
//! down.

use super::*;

/// Hash of runtime flag values (`PUT /api/flags`), shared by all replicas.
const FLAGS_KEY: &str = "fg:flags";

impl RedisTier {
    /// Write runtime flag values (None clears one) for every replica to read.
    /// Flags are not tied to `run_id`: they are operator intent, not cache data.
    pub async fn set_flags(&self, values: &[(&str, Option<bool>)]) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        for (name, v) in values {
            let cmd = match v {
                Some(b) => redis::cmd("HSET")
                    .arg(FLAGS_KEY)
                    .arg(*name)
                    .arg(if *b { "true" } else { "false" })
                    .clone(),
                None => redis::cmd("HDEL").arg(FLAGS_KEY).arg(*name).clone(),
            };
            if self.run_data::<i64>(&link, "flags", cmd).await.is_none() {
                return false;
            }
        }
        true
    }

    /// The runtime flag values shared by all replicas; `None` if unreachable.
    pub async fn flags(&self) -> Option<std::collections::HashMap<String, String>> {
        let link = self.link.load_full()?;
        self.run_data(&link, "flags", redis::cmd("HGETALL").arg(FLAGS_KEY).clone())
            .await
    }

    /// Run a monitoring pipeline: a longer timeout than the request path's,
    /// and failures never open the breaker (monitoring data is not worth
    /// turning cache hits into misses for).
    pub(super) async fn side_query<T: redis::FromRedisValue>(
        &self,
        link: &Link,
        op: &'static str,
        pipe: redis::Pipeline,
    ) -> Option<T> {
        let mut conn = link.conn.clone();
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(SIDE_TIMEOUT, pipe.query_async::<T>(&mut conn)).await;
        METRICS
            .store_op_seconds
            .with_label_values(&["redis", op])
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                METRICS.store_errors.with_label_values(&["redis", op]).inc();
                warn!(error = %e, op, "redis monitoring call failed");
                None
            }
            Err(_) => {
                METRICS.store_errors.with_label_values(&["redis", op]).inc();
                None
            }
        }
    }

    /// Add counters to monitoring hashes (`HINCRBY`), each key with its TTL.
    /// Keys are named without a prefix (`mon:m:<minute>`).
    pub async fn monitor_add(
        &self,
        writes: std::collections::HashMap<String, (Vec<(String, u64)>, Duration)>,
    ) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        let side = Keys::side(link.cluster.is_some());
        let mut pipe = redis::pipe();
        for (name, (fields, ttl)) in &writes {
            let key = format!("{side}{name}");
            for (field, n) in fields {
                pipe.cmd("HINCRBY").arg(&key).arg(field).arg(*n).ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        self.side_query::<()>(&link, "monitor_add", pipe)
            .await
            .is_some()
    }

    /// Read monitoring hashes, one map per key (empty when missing), named
    /// as for [`Self::monitor_add`].
    pub async fn monitor_read(
        &self,
        names: &[String],
    ) -> Option<Vec<std::collections::HashMap<String, u64>>> {
        let link = self.link.load_full()?;
        let side = Keys::side(link.cluster.is_some());
        let mut pipe = redis::pipe();
        for name in names {
            pipe.cmd("HGETALL").arg(format!("{side}{name}"));
        }
        self.side_query(&link, "monitor_read", pipe).await
    }
}

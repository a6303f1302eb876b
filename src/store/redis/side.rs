//! Redis for other modules' data, which they name and shape themselves:
//! single hashes over the entry connection (runtime flags, `flags.rs`), and
//! batches of counter hashes in the log's slot (monitoring buckets,
//! `monitor/`: `fg:mon:…`, `{fg}:mon:…` on a Redis Cluster, so one pipeline
//! reaches them all). Monitoring batches are off the request path (a longer
//! timeout, and never a reason to mark Redis down); the flag hashes are
//! plain calls (the request timeout, and off a cluster their failures count
//! towards the breaker, as any call's).

use super::*;

impl RedisTier {
    /// Set (Some) or clear (None) fields of hash `key`, named in full. Not
    /// tied to `run_id`: what other modules keep here is not cache data.
    /// `op` labels the calls in metrics.
    pub async fn hash_set(
        &self,
        op: &'static str,
        key: &str,
        fields: &[(&str, Option<&str>)],
    ) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        for (field, v) in fields {
            let cmd = match v {
                Some(v) => redis::cmd("HSET").arg(key).arg(*field).arg(*v).clone(),
                None => redis::cmd("HDEL").arg(key).arg(*field).clone(),
            };
            if self.run_data::<i64>(&link, op, cmd).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Every field of hash `key`; `None` if Redis cannot be read.
    pub async fn hash_get(
        &self,
        op: &'static str,
        key: &str,
    ) -> Option<std::collections::HashMap<String, String>> {
        let link = self.link.load_full()?;
        self.run_data(&link, op, redis::cmd("HGETALL").arg(key).clone())
            .await
    }

    /// Run a pipeline of other modules' data: a longer timeout than the request path's,
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

    /// Add counters to hashes (`HINCRBY`), each key with its TTL, in one
    /// pipeline. Keys are named without the prefix (`mon:m:<minute>`).
    pub async fn hashes_add(
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

    /// Read hashes, one map per key (empty when missing), named as for
    /// [`Self::hashes_add`].
    pub async fn hashes_read(
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

//! Reaching the Redis process that holds the log: on one Redis, the one the
//! URL names; on a Redis Cluster, the master serving the log's slot (every
//! log key carries the hash tag `{fg}`, see `log`), found by following
//! `MOVED` from the first node that answers. There, entries go over a second,
//! cluster-aware connection: each is checked against the log before it is
//! served, so it may live on any master and follow the cluster as it changes.

use redis::IntoConnectionInfo;

use super::*;

impl RedisTier {
    /// Connect to the node that holds the log, learn its run, and the floor
    /// of its hold on the log (see [`log::HOLDER`]). On a Redis Cluster that node is
    /// the master serving the log's slot: the first node that answers
    /// (`url`, then the nodes last seen) redirects there. The link is
    /// returned without its epoch and generation (0): `connect` sets them. Bounded in time as a whole:
    /// writes may be waiting for it.
    pub(super) async fn reach_log(&self) -> Result<(Link, u64), Option<redis::RedisError>> {
        let mut candidates = vec![self.url.as_str().into_connection_info().map_err(Some)?];
        candidates.extend(self.nodes.lock().iter().cloned());
        let deadline = self.check_timeout() * 8;
        let attempts = async {
            let mut first_error = None;
            for node in candidates {
                match self.reach_from(node).await {
                    Ok(reached) => return Ok(reached),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(first_error.flatten())
        };
        tokio::time::timeout(deadline, attempts)
            .await
            .map_err(|_| None)?
    }

    async fn reach_from(
        &self,
        mut node: redis::ConnectionInfo,
    ) -> Result<(Link, u64), Option<redis::RedisError>> {
        let (mut conn, mut on_request_runtime) =
            self.open_connection(node.clone()).await.map_err(Some)?;
        let timeout = self.check_timeout();
        let info: String = tokio::time::timeout(
            timeout,
            redis::cmd("INFO").arg("cluster").query_async(&mut conn),
        )
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
        let in_cluster = info.lines().any(|l| l.trim() == "cluster_enabled:1");
        if in_cluster {
            // Follow redirects to the log's master (one, unless the cluster
            // is changing under us).
            for hop in 0.. {
                let probe = tokio::time::timeout(
                    timeout,
                    redis::cmd("EXISTS")
                        .arg(Keys::probe())
                        .query_async::<i64>(&mut conn),
                )
                .await
                .map_err(|_| None)?;
                let Err(e) = probe else { break };
                let Some((addr, _slot)) = e.redirect_node().filter(|_| hop < 3) else {
                    return Err(Some(e));
                };
                node = node.set_addr(tcp_addr(addr).ok_or(Some(e.clone()))?);
                (conn, on_request_runtime) =
                    self.open_connection(node.clone()).await.map_err(Some)?;
            }
        }
        let mut link = Link {
            conn,
            node,
            cluster: None,
            run: Arc::from(""),
            generation: 0,
            witness: Arc::default(),
            log: Arc::from(""),
            epoch: 0,
            checks: Default::default(),
            on_request_runtime,
        };
        let identity = self.identity(&link.conn).await?;
        if !identity.primary {
            return Err(Some(redis::RedisError::from((
                redis::ErrorKind::Io,
                "this redis is a replica: the log is held by its primary",
            ))));
        }
        link.run = identity.run;
        // The witness of this run, if this replica saw it before (a new
        // one is kept only once the link is: see `connect`).
        link.witness = match &*self.witness.lock() {
            Some((run, w)) if *run == link.run => w.clone(),
            _ => Arc::default(),
        };
        link.witness
            .replicated
            .fetch_or(identity.replicated || in_cluster, Ordering::AcqRel);
        link.log = Keys::log(&link.run, in_cluster).into();
        if in_cluster {
            link.cluster = Some(self.open_cluster(&link).await.map_err(Some)?);
        }
        let floor = self.hold_floor(&link).await?;
        Ok((link, floor))
    }

    /// The floor of this run's current hold on the log: the clock value
    /// before which nothing in its log may be trusted (see [`log::HOLDER`]).
    pub(super) async fn hold_floor(&self, link: &Link) -> Result<u64, Option<redis::RedisError>> {
        let w = &link.witness;
        // A record older than `inv_ttl` (half its marker's life) is not
        // asked about (the tags it set have expired too).
        let recorded = if mono_ms().saturating_sub(w.recorded_at_ms.load(Ordering::Acquire))
            < self.inv_ttl.as_millis() as u64
        {
            w.recorded.load(Ordering::Acquire)
        } else {
            0
        };
        // Its beat, set in this run, must still be there for a minute past
        // half its life (by this process's monotonic clock, which no step
        // of Redis's clock moves); from half its life on, a new one is set,
        // after the script has looked for the old one.
        let now = mono_ms();
        let beat_at = w.beat_at_ms.load(Ordering::Acquire);
        let (beat_expected, beat_due) = log::beat_plan(beat_at, now);
        let mut inv = self.holder_script.prepare_invoke();
        inv.key(Keys::holder(link.cluster.is_some()))
            .key(Keys::clock(&link.log))
            .key(Keys::floor(&link.log))
            .key(Keys::marker(&link.log, &self.replica_id))
            .key(Keys::beat(&link.log, &self.replica_id))
            .arg(&*link.run)
            .arg(log::HOLDER_GAP)
            .arg(w.clock.load(Ordering::Acquire))
            .arg(recorded)
            .arg(FENCE_UNIT / 2)
            .arg(self.marker_ttl_ms())
            .arg(u8::from(beat_expected))
            .arg(log::BEAT_TTL.as_millis() as u64)
            .arg(u8::from(beat_due));
        let mut conn = link.conn.clone();
        let (floor, beat_set) = tokio::time::timeout(
            self.check_timeout(),
            inv.invoke_async::<(u64, u8)>(&mut conn),
        )
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
        if beat_at != 0 && !beat_expected {
            // No new beat for a minute past half its life (this replica's
            // checks stalled, or Redis refused writes): a jump meanwhile
            // went unseen. It trusts nothing it fetched before (the outage
            // path moves its floor).
            self.outage_began.fetch_add(1, Ordering::AcqRel);
        }
        if beat_set == 1 {
            w.beat_at_ms.fetch_max(now, Ordering::AcqRel);
        }
        Ok(floor)
    }

    /// A connection to every master of the cluster `link` reached, routing
    /// each command by its key; and the cluster's nodes, remembered.
    async fn open_cluster(&self, link: &Link) -> redis::RedisResult<ClusterConnection> {
        let mut conn = link.conn.clone();
        let listing: String = tokio::time::timeout(
            self.check_timeout(),
            redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "CLUSTER NODES timed out"))
        })??;
        let nodes: Vec<redis::ConnectionInfo> = cluster_nodes(&listing)
            .filter_map(|addr| Some(link.node.clone().set_addr(tcp_addr(addr)?)))
            .collect();
        let mut seeds = vec![link.node.clone()];
        seeds.extend(nodes.iter().cloned());
        *self.nodes.lock() = nodes;
        let limit = self.connect_timeout();
        let client = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(limit)
            .response_timeout(limit * 8)
            // Requests give up after `timeout` anyway: a retry may move an
            // entry's read to a new master, never more than that.
            .retries(2)
            .build()?;
        tokio::time::timeout(limit * 8, client.get_async_connection())
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "cluster connection timed out"))
            })?
    }
}

/// `host:port` (as a cluster names its nodes) as an address to connect to.
fn tcp_addr(addr: &str) -> Option<redis::ConnectionAddr> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(redis::ConnectionAddr::Tcp(
        host.to_string(),
        port.parse().ok()?,
    ))
}

/// The addresses `CLUSTER NODES` lists (`<id> <ip:port@cport[,host]> …`),
/// without nodes that have none.
fn cluster_nodes(listing: &str) -> impl Iterator<Item = &str> {
    listing.lines().filter_map(|line| {
        let addr = line.split(' ').nth(1)?.split(['@', ',']).next()?;
        let flags = line.split(' ').nth(2)?;
        (!flags.contains("noaddr") && !addr.starts_with(':')).then_some(addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_node_addresses_are_read_from_its_listing() {
        let listing = "\
07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002,node-2.example master - 0 1426238316232 2 connected 5461-10922
292f :0@0 master,fail,noaddr - 0 0 3 disconnected
e7d1 [::1]:30003@40003 slave 292f 0 0 3 connected
";
        let addrs: Vec<&str> = cluster_nodes(listing).collect();
        assert_eq!(addrs, ["127.0.0.1:30004", "127.0.0.1:30002", "[::1]:30003"]);
        assert_eq!(
            tcp_addr("[::1]:30003"),
            Some(redis::ConnectionAddr::Tcp("::1".into(), 30003))
        );
        assert_eq!(tcp_addr("nonsense"), None);
    }
}

//! pingora-cache's side of the store: [`Storage`] over [`Store`], and the
//! handlers that read a hit's body and write a miss's. What may be served
//! and where it is kept is decided in `mod.rs`; this file only translates.

use std::any::Any;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

use super::{decode_meta, usable_until, Entry, FillInfo, Store};

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(c) = self.find(&key.combined_bin()).await else {
            return Ok(None);
        };
        let meta = decode_meta(&c.entry)?;
        let body = c.entry.body();
        let end = body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body,
                done: false,
                start: 0,
                end,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        // Without the clock value read before the fetch, an entry could not be
        // checked against invalidations: refuse to store it.
        let Some(fill) = meta.extensions().get::<FillInfo>().cloned() else {
            return Error::e_explain(ErrorType::InternalError, "response has no fill info");
        };
        Ok(Box::new(Miss {
            store: self,
            key: key.combined_bin(),
            meta_internal: internal.into(),
            meta_header: header.into(),
            until: usable_until(meta),
            fill,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if self.remove(&target.key().combined_bin()).await {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        let Some(old) = self.find(&k).await else {
            return Ok(false);
        };
        let (internal, header) = meta.serialize()?;
        let Ok(entry) = old.entry.with_meta(&internal, &header) else {
            return Ok(false);
        };
        self.put(k, entry, usable_until(meta), old.epoch).await;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body of {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    store: &'static Store,
    key: HashBinary,
    meta_internal: Bytes,
    meta_header: Bytes,
    /// From the response's meta, read here so that it need not be decoded
    /// again when the fill ends.
    until: std::time::SystemTime,
    fill: FillInfo,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        if self.fill.began.elapsed() >= super::clock::MAX_FILL {
            tracing::warn!("a fill that took longer than the log's margin allows is not stored");
            return Ok(MissFinishType::Created(size));
        }
        // Encoded into a buffer of exactly its length, which the memory
        // tier keeps (the fill's buffer has spare capacity).
        let entry = match Entry::new(
            self.fill.fetch_seq,
            self.fill.rules,
            &self.fill.tags,
            &self.meta_internal,
            &self.meta_header,
            &self.body,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "entry not stored");
                return Ok(MissFinishType::Created(size));
            }
        };
        self.store
            .put(self.key, entry, self.until, self.fill.epoch)
            .await;
        Ok(MissFinishType::Created(size))
    }
}

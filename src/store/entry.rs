//! The stored form of one cached response, shared by both tiers.
//!
//! Layout (version 2), all integers big-endian:
//! `b"FG"`, version `u8`, `fetch_seq u64`, `rules u64`, tag count `u16`, each tag as `u16`
//! length + UTF-8, pingora's meta as two `u32`-length-prefixed blobs
//! (`CacheMeta::serialize`: internal + header), then the body to the end.
//!
//! The version byte is why a rolling upgrade never misreads an entry: a reader
//! that does not know the version treats the entry as a miss. The Redis key also
//! carries the version, so old and new replicas simply do not see each other's
//! entries while both run.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MAGIC: &[u8; 2] = b"FG";
pub const VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The invalidation clock read before the fetch began (see invalidation).
    pub fetch_seq: u64,
    /// Fingerprint of the rules that computed `tags`: an entry is only served
    /// under the same rules (see `config::Config::rules_fingerprint`).
    pub rules: u64,
    /// Invalidation tags this response belongs to.
    pub tags: Vec<String>,
    pub meta_internal: Bytes,
    pub meta_header: Bytes,
    pub body: Bytes,
}

/// An entry the format cannot hold whole. Refused rather than stored
/// without a tag: it would then miss that tag's invalidation.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{count} tags (longest {longest} bytes): the format holds 65,535 of at most 65,535 bytes")]
pub struct TooManyTags {
    pub count: usize,
    pub longest: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a freshgate entry")]
    BadMagic,
    #[error("entry format version {0} is not known to this build")]
    UnknownVersion(u8),
    #[error("entry is truncated")]
    Truncated,
    #[error("entry tag is not UTF-8")]
    BadTag,
}

impl Entry {
    /// Whether `tags` fit the format whole (at most 65,535 tags of at most
    /// 65,535 bytes): an entry must never be stored without one of its tags.
    pub fn can_hold(tags: &[String]) -> bool {
        tags.len() <= u16::MAX as usize && tags.iter().all(|t| t.len() <= u16::MAX as usize)
    }

    /// Bytes this entry occupies, for the memory tier's byte bound.
    pub fn weight(&self) -> usize {
        64 + self.meta_internal.len()
            + self.meta_header.len()
            + self.body.len()
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
    }

    pub fn encode(&self) -> Result<Bytes, TooManyTags> {
        if !Entry::can_hold(&self.tags) {
            return Err(TooManyTags {
                count: self.tags.len(),
                longest: self.tags.iter().map(String::len).max().unwrap_or(0),
            });
        }
        // Exactly its length: the memory tier keeps this very buffer (meta
        // and body are slices of it), so spare capacity would be kept too.
        let len = MAGIC.len()
            + 1
            + 8
            + 8
            + 2
            + self.tags.iter().map(|t| 2 + t.len()).sum::<usize>()
            + 4
            + self.meta_internal.len()
            + 4
            + self.meta_header.len()
            + self.body.len();
        let mut b = BytesMut::with_capacity(len);
        b.put_slice(MAGIC);
        b.put_u8(VERSION);
        b.put_u64(self.fetch_seq);
        b.put_u64(self.rules);
        b.put_u16(self.tags.len() as u16);
        for t in &self.tags {
            b.put_u16(t.len() as u16);
            b.put_slice(t.as_bytes());
        }
        b.put_u32(self.meta_internal.len() as u32);
        b.put_slice(&self.meta_internal);
        b.put_u32(self.meta_header.len() as u32);
        b.put_slice(&self.meta_header);
        b.put_slice(&self.body);
        debug_assert_eq!(b.len(), len, "the length computed up front");
        Ok(b.freeze())
    }

    pub fn decode(mut buf: Bytes) -> Result<Entry, DecodeError> {
        if buf.len() < 3 || &buf[..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        buf.advance(2);
        let version = buf.get_u8();
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        need(&buf, 18)?;
        let fetch_seq = buf.get_u64();
        let rules = buf.get_u64();
        let ntags = buf.get_u16() as usize;
        let mut tags = Vec::with_capacity(ntags);
        for _ in 0..ntags {
            need(&buf, 2)?;
            let len = buf.get_u16() as usize;
            need(&buf, len)?;
            let t = buf.split_to(len);
            tags.push(String::from_utf8(t.to_vec()).map_err(|_| DecodeError::BadTag)?);
        }
        let meta_internal = take_u32_prefixed(&mut buf)?;
        let meta_header = take_u32_prefixed(&mut buf)?;
        Ok(Entry {
            fetch_seq,
            rules,
            tags,
            meta_internal,
            meta_header,
            body: buf,
        })
    }
}

fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

fn take_u32_prefixed(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    need(buf, 4)?;
    let len = buf.get_u32() as usize;
    need(buf, len)?;
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            fetch_seq: 42,
            rules: 7,
            tags: vec!["scene:id=7".into(), "stories".into()],
            meta_internal: Bytes::from_static(b"internal"),
            meta_header: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
            body: Bytes::from_static(b"{\"text\":\"hello\"}"),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Entry::decode(e.encode().unwrap()).unwrap(), e);
    }

    #[test]
    fn other_versions_are_refused_not_misread() {
        let mut raw = e_bytes();
        raw[2] = 1;
        assert_eq!(
            Entry::decode(Bytes::from(raw)),
            Err(DecodeError::UnknownVersion(1))
        );
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let raw = e_bytes();
        for cut in [0, 1, 5, 12, 20, 28, 38] {
            assert!(
                Entry::decode(Bytes::copy_from_slice(&raw[..cut])).is_err(),
                "cut {cut}"
            );
        }
        assert_eq!(
            Entry::decode(Bytes::from_static(b"hello world")),
            Err(DecodeError::BadMagic)
        );
    }

    #[test]
    fn tags_that_do_not_fit_are_refused_not_cut() {
        let mut long = sample();
        long.tags.push("x".repeat(u16::MAX as usize + 1));
        assert_eq!(
            long.encode(),
            Err(TooManyTags {
                count: 3,
                longest: u16::MAX as usize + 1
            })
        );
        let mut many = sample();
        many.tags = vec!["t".into(); u16::MAX as usize + 1];
        assert!(many.encode().is_err());
        many.tags.pop();
        let whole = Entry::decode(many.encode().unwrap()).unwrap();
        assert_eq!(whole.tags.len(), u16::MAX as usize);
    }

    fn e_bytes() -> Vec<u8> {
        sample().encode().unwrap().to_vec()
    }
}

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
    pub tags: Tags,
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

/// An entry's invalidation tags, laid out as the format holds them (`u16`
/// length + UTF-8 each) in one buffer: a decoded entry's tags are a slice
/// of the entry's own buffer. Held as separate strings, they were most of
/// an entry's bookkeeping in memory (an allocation per tag and one for the
/// list); cloning this is a reference count.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags {
    raw: Bytes,
    count: u16,
}

impl Tags {
    /// `tags` laid out, or refused if the format cannot hold them whole (at
    /// most 65,535 tags of at most 65,535 bytes): an entry must never be
    /// stored without one of its tags.
    pub fn new<S: AsRef<str>>(tags: &[S]) -> Result<Tags, TooManyTags> {
        let longest = tags.iter().map(|t| t.as_ref().len()).max().unwrap_or(0);
        if tags.len() > u16::MAX as usize || longest > u16::MAX as usize {
            return Err(TooManyTags {
                count: tags.len(),
                longest,
            });
        }
        let len = tags.iter().map(|t| 2 + t.as_ref().len()).sum();
        let mut raw = BytesMut::with_capacity(len);
        for t in tags {
            raw.put_u16(t.as_ref().len() as u16);
            raw.put_slice(t.as_ref().as_bytes());
        }
        Ok(Tags {
            raw: raw.freeze(),
            count: tags.len() as u16,
        })
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + Clone {
        let mut rest: &[u8] = &self.raw;
        std::iter::from_fn(move || {
            let (len, after) = rest.split_first_chunk::<2>()?;
            let (tag, after) = after.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
            rest = after;
            // UTF-8 was checked when these bytes were laid out or decoded.
            std::str::from_utf8(tag).ok()
        })
    }

    /// `count` tags from the front of `buf`, checked whole.
    fn decode(buf: &mut Bytes, count: u16) -> Result<Tags, DecodeError> {
        let mut len = 0;
        for _ in 0..count {
            need_at(buf, len, 2)?;
            let n = usize::from(u16::from_be_bytes([buf[len], buf[len + 1]]));
            need_at(buf, len + 2, n)?;
            std::str::from_utf8(&buf[len + 2..len + 2 + n]).map_err(|_| DecodeError::BadTag)?;
            len += 2 + n;
        }
        Ok(Tags {
            raw: buf.split_to(len),
            count,
        })
    }
}

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Entry {
    /// Bytes this entry occupies, for the memory tier's byte bound.
    pub fn weight(&self) -> usize {
        64 + self.meta_internal.len()
            + self.meta_header.len()
            + self.body.len()
            + self.tags.raw.len()
    }

    pub fn encode(&self) -> Bytes {
        // Exactly its length: the memory tier keeps this very buffer (meta
        // and body are slices of it), so spare capacity would be kept too.
        let len = MAGIC.len()
            + 1
            + 8
            + 8
            + 2
            + self.tags.raw.len()
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
        b.put_u16(self.tags.count);
        b.put_slice(&self.tags.raw);
        b.put_u32(self.meta_internal.len() as u32);
        b.put_slice(&self.meta_internal);
        b.put_u32(self.meta_header.len() as u32);
        b.put_slice(&self.meta_header);
        b.put_slice(&self.body);
        debug_assert_eq!(b.len(), len, "the length computed up front");
        b.freeze()
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
        let count = buf.get_u16();
        let tags = Tags::decode(&mut buf, count)?;
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
    need_at(buf, 0, n)
}

/// Whether `buf` holds `n` bytes after its first `at`.
fn need_at(buf: &Bytes, at: usize, n: usize) -> Result<(), DecodeError> {
    if buf.remaining().saturating_sub(at) < n {
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
            tags: Tags::new(&["scene:id=7", "stories"]).unwrap(),
            meta_internal: Bytes::from_static(b"internal"),
            meta_header: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
            body: Bytes::from_static(b"{\"text\":\"hello\"}"),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let back = Entry::decode(e.encode()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.tags.iter().collect::<Vec<_>>(),
            ["scene:id=7", "stories"]
        );
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
        let long = [
            "a".to_string(),
            "b".into(),
            "x".repeat(u16::MAX as usize + 1),
        ];
        assert_eq!(
            Tags::new(&long),
            Err(TooManyTags {
                count: 3,
                longest: u16::MAX as usize + 1
            })
        );
        let mut many = vec!["t"; u16::MAX as usize + 1];
        assert!(Tags::new(&many).is_err());
        many.pop();
        let mut e = sample();
        e.tags = Tags::new(&many).unwrap();
        let whole = Entry::decode(e.encode()).unwrap();
        assert_eq!(whole.tags.len(), u16::MAX as usize);
        assert_eq!(whole.tags.iter().count(), u16::MAX as usize);
    }

    #[test]
    fn a_tag_that_is_not_utf8_is_refused() {
        let mut raw = e_bytes();
        // The first tag's first byte (after magic, version, seq, rules,
        // count and the tag's length).
        raw[2 + 1 + 8 + 8 + 2 + 2] = 0xff;
        assert_eq!(Entry::decode(Bytes::from(raw)), Err(DecodeError::BadTag));
    }

    fn e_bytes() -> Vec<u8> {
        sample().encode().to_vec()
    }
}

//! The stored form of one cached response, shared by both tiers.
//!
//! Layout (version 2), all integers big-endian:
//! `b"FG"`, version `u8`, `fetch_seq u64`, `rules u64`, tag count `u16`, each tag as `u16`
//! length + UTF-8, pingora's meta as two `u32`-length-prefixed blobs
//! (`CacheMeta::serialize`: internal + header), then the body to the end.
//!
//! An [`Entry`] *is* that encoding: built once, when a fill finishes, into a
//! buffer of exactly its length, and kept as such in memory (what is read
//! from it are slices of that one buffer: one allocation per entry, nothing
//! decoded twice) and in Redis.
//!
//! The version byte is why a rolling upgrade never misreads an entry: a reader
//! that does not know the version treats the entry as a miss. The Redis key also
//! carries the version, so old and new replicas simply do not see each other's
//! entries while both run.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: &[u8; 2] = b"FG";
pub const VERSION: u8 = 2;

/// Magic, version, `fetch_seq`, `rules`, tag count.
const HEAD: usize = 2 + 1 + 8 + 8 + 2;

/// One cached response as stored (see the layout above).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The encoding; `fetch_seq` and `rules` are read from it (kept only
    /// there: an entry's bookkeeping in memory is what the memory tier's
    /// RSS is made of, beyond the bodies).
    buf: Bytes,
    tag_count: u16,
    // Where the parts lie in `buf` (an entry is far below 4 GiB: `new`
    // refuses one that is not).
    tags: Range<u32>,
    meta_internal: Range<u32>,
    meta_header: Range<u32>,
    body: u32,
}

/// An entry's invalidation tags, laid out as the format holds them (`u16`
/// length + UTF-8 each) in one buffer: an entry's tags are a slice of the
/// entry's own buffer. Held as separate strings, they were most of an
/// entry's bookkeeping in memory (an allocation per tag and one for the
/// list); cloning this is a reference count.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags {
    raw: Bytes,
    count: u16,
}

/// An entry the format cannot hold whole. Refused rather than stored
/// without a tag: it would then miss that tag's invalidation.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{count} tags (longest {longest} bytes): the format holds 65,535 of at most 65,535 bytes")]
pub struct TooManyTags {
    pub count: usize,
    pub longest: usize,
}

/// An entry of 4 GiB or more: refused (the memory tier addresses its parts
/// with 32-bit offsets; no object that large is cached).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("an entry of {0} bytes is too large to store")]
pub struct TooLarge(pub usize);

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
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
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
        tag_names(&self.raw)
    }
}

impl std::fmt::Debug for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The tags laid out in `raw` (UTF-8 was checked when they were laid out
/// or decoded).
fn tag_names(mut raw: &[u8]) -> impl Iterator<Item = &str> + Clone {
    std::iter::from_fn(move || {
        let (len, after) = raw.split_first_chunk::<2>()?;
        let (tag, after) = after.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        raw = after;
        let name = std::str::from_utf8(tag).ok();
        // Never: every way to make tags checks them. Were it to happen, an
        // entry would look valid with a tag missing.
        debug_assert!(name.is_some(), "tags laid out unchecked");
        name
    })
}

/// Which invalidation rules tagged an entry or planned a write: a hash of
/// what decides tags (`config::Config::rules_fingerprint`); 0 before any
/// rules are known. Shown (and kept in Redis) as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RulesFingerprint(pub u64);

impl std::fmt::Display for RulesFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Entry {
    /// Encode a response fetched when the clock read `fetch_seq`, tagged by
    /// rules `rules`, into a buffer of exactly its length.
    pub fn new(
        fetch_seq: u64,
        rules: RulesFingerprint,
        tags: &Tags,
        meta_internal: &[u8],
        meta_header: &[u8],
        body: &[u8],
    ) -> Result<Entry, TooLarge> {
        let len =
            HEAD + tags.raw.len() + 4 + meta_internal.len() + 4 + meta_header.len() + body.len();
        if u32::try_from(len).is_err() {
            return Err(TooLarge(len));
        }
        let mut b = BytesMut::with_capacity(len);
        b.put_slice(MAGIC);
        b.put_u8(VERSION);
        b.put_u64(fetch_seq);
        b.put_u64(rules.0);
        b.put_u16(tags.count);
        b.put_slice(&tags.raw);
        b.put_u32(meta_internal.len() as u32);
        b.put_slice(meta_internal);
        b.put_u32(meta_header.len() as u32);
        b.put_slice(meta_header);
        b.put_slice(body);
        debug_assert_eq!(b.len(), len, "the length computed up front");
        // Where the parts lie, known from the lengths (`len` fits a u32, so
        // every offset does): the buffer need not be read back.
        let tags_end = (HEAD + tags.raw.len()) as u32;
        let internal = tags_end + 4..tags_end + 4 + meta_internal.len() as u32;
        let header = internal.end + 4..internal.end + 4 + meta_header.len() as u32;
        let entry = Entry {
            buf: b.freeze(),
            tag_count: tags.count,
            tags: HEAD as u32..tags_end,
            meta_internal: internal,
            body: header.end,
            meta_header: header,
        };
        debug_assert_eq!(Entry::decode(entry.buf.clone()).as_ref(), Ok(&entry));
        Ok(entry)
    }

    /// The same response with another stored header (a 304 freshened it).
    pub fn with_meta(&self, meta_internal: &[u8], meta_header: &[u8]) -> Result<Entry, TooLarge> {
        Entry::new(
            self.fetch_seq(),
            self.rules(),
            &self.tags(),
            meta_internal,
            meta_header,
            &self.buf[self.body as usize..],
        )
    }

    /// Read an entry from its encoding, checked whole.
    pub fn decode(buf: Bytes) -> Result<Entry, DecodeError> {
        if buf.len() < 3 || &buf[..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[2] != VERSION {
            return Err(DecodeError::UnknownVersion(buf[2]));
        }
        let offset = |at: usize| u32::try_from(at).map_err(|_| TooLarge(buf.len()));
        let mut at = HEAD;
        let head = buf.get(..HEAD).ok_or(DecodeError::Truncated)?;
        let tag_count = u16::from_be_bytes([head[HEAD - 2], head[HEAD - 1]]);
        let tags_start = at;
        for _ in 0..tag_count {
            let len = usize::from(u16::from_be_bytes(take::<2>(&buf, &mut at)?));
            let tag = buf.get(at..at + len).ok_or(DecodeError::Truncated)?;
            std::str::from_utf8(tag).map_err(|_| DecodeError::BadTag)?;
            at += len;
        }
        let tags = offset(tags_start)?..offset(at)?;
        let blob = |at: &mut usize| -> Result<Range<u32>, DecodeError> {
            let len = u32::from_be_bytes(take::<4>(&buf, at)?) as usize;
            let start = *at;
            buf.get(start..start + len).ok_or(DecodeError::Truncated)?;
            *at += len;
            Ok(offset(start)?..offset(*at)?)
        };
        let meta_internal = blob(&mut at)?;
        let meta_header = blob(&mut at)?;
        let body = offset(at)?;
        Ok(Entry {
            tag_count,
            tags,
            meta_internal,
            meta_header,
            body,
            buf,
        })
    }

    /// The encoding, as Redis stores it.
    pub fn encoded(&self) -> &Bytes {
        &self.buf
    }

    /// The invalidation clock read before the fetch began (see invalidation).
    pub fn fetch_seq(&self) -> u64 {
        self.number_at(3)
    }

    /// Fingerprint of the rules that computed the tags: an entry is only
    /// served under the same rules (see `config::Config::rules_fingerprint`).
    pub fn rules(&self) -> RulesFingerprint {
        RulesFingerprint(self.number_at(11))
    }

    fn number_at(&self, at: usize) -> u64 {
        let bytes = self.buf[at..at + 8]
            .try_into()
            .expect("decode checked the head");
        u64::from_be_bytes(bytes)
    }

    /// The tags, sharing the entry's buffer.
    pub fn tags(&self) -> Tags {
        Tags {
            raw: self.buf.slice(range(&self.tags)),
            count: self.tag_count,
        }
    }

    /// The tags' names, read in place.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> + Clone {
        tag_names(&self.buf[range(&self.tags)])
    }

    pub fn meta_internal(&self) -> &[u8] {
        &self.buf[range(&self.meta_internal)]
    }

    pub fn meta_header(&self) -> &[u8] {
        &self.buf[range(&self.meta_header)]
    }

    /// The body, sharing the entry's buffer.
    pub fn body(&self) -> Bytes {
        self.buf.slice(self.body as usize..)
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("fetch_seq", &self.fetch_seq())
            .field("rules", &self.rules())
            .field("tags", &self.tags())
            .field("meta_header", &self.meta_header().len())
            .field("body", &(self.buf.len() - self.body as usize))
            .finish()
    }
}

fn range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// `N` bytes of `buf` at `*at`, moving past them.
fn take<const N: usize>(buf: &[u8], at: &mut usize) -> Result<[u8; N], DecodeError> {
    let bytes = buf
        .get(*at..*at + N)
        .ok_or(DecodeError::Truncated)?
        .try_into()
        .expect("N bytes");
    *at += N;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_with(tags: &Tags) -> Entry {
        Entry::new(
            42,
            RulesFingerprint(7),
            tags,
            b"internal",
            b"HTTP/1.1 200 OK\r\n",
            b"{\"text\":\"hello\"}",
        )
        .unwrap()
    }

    fn sample() -> Entry {
        sample_with(&Tags::new(&["scene:id=7", "stories"]).unwrap())
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let back = Entry::decode(e.encoded().clone()).unwrap();
        assert_eq!(back, e);
        assert_eq!((back.fetch_seq(), back.rules()), (42, RulesFingerprint(7)));
        assert_eq!(
            back.tags().iter().collect::<Vec<_>>(),
            ["scene:id=7", "stories"]
        );
        assert_eq!(
            back.tag_names().collect::<Vec<_>>(),
            ["scene:id=7", "stories"]
        );
        assert_eq!(back.meta_internal(), b"internal");
        assert_eq!(back.meta_header(), b"HTTP/1.1 200 OK\r\n");
        assert_eq!(&back.body()[..], b"{\"text\":\"hello\"}");
        let freshened = back
            .with_meta(b"i2", b"HTTP/1.1 200 OK\r\nage: 1\r\n")
            .unwrap();
        assert_eq!(freshened.meta_header(), b"HTTP/1.1 200 OK\r\nage: 1\r\n");
        assert_eq!(
            (freshened.body(), freshened.tags()),
            (back.body(), back.tags())
        );
    }

    #[test]
    fn an_entry_is_one_buffer_of_exactly_its_length() {
        let e = sample();
        let len = HEAD + (2 + 10 + 2 + 7) + (4 + 8) + (4 + 17) + 16;
        assert_eq!(e.encoded().len(), len);
        let body = e.body();
        assert_eq!(
            body.as_ptr(),
            e.encoded()[len - 16..].as_ptr(),
            "the body is a slice of the entry's buffer"
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
        for cut in [0, 1, 5, 12, 20, 28, 38, 50, 60] {
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
        let whole = sample_with(&Tags::new(&many).unwrap());
        assert_eq!(whole.tags().len(), u16::MAX as usize);
        assert_eq!(whole.tag_names().count(), u16::MAX as usize);
    }

    #[test]
    fn a_tag_that_is_not_utf8_is_refused() {
        let mut raw = e_bytes();
        // The first tag's first byte (after the head and the tag's length).
        raw[HEAD + 2] = 0xff;
        assert_eq!(Entry::decode(Bytes::from(raw)), Err(DecodeError::BadTag));
    }

    #[test]
    fn any_bytes_decode_to_a_whole_entry_or_an_error_never_a_panic() {
        let whole = e_bytes();
        // Every cut of a real entry, and every single-byte change of it.
        for cut in 0..whole.len() {
            let _ = Entry::decode(Bytes::copy_from_slice(&whole[..cut]));
        }
        for at in 0..whole.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut raw = whole.clone();
                raw[at] = byte;
                if let Ok(e) = Entry::decode(Bytes::from(raw)) {
                    assert_eq!(e.tag_names().count(), e.tags().len(), "byte {at} = {byte}");
                    let _ = (
                        e.fetch_seq(),
                        e.rules(),
                        e.meta_internal(),
                        e.meta_header(),
                        e.body(),
                    );
                }
            }
        }
    }

    fn e_bytes() -> Vec<u8> {
        sample().encoded().to_vec()
    }
}

//! A write buffer that sends what it holds together with the write that does
//! not fit, in one vectored call (freshgate's change to pingora-core 0.9.1; see
//! `vendor/README.md`).
//!
//! pingora buffers a connection's writes in tokio's `BufWriter` (1,460 bytes by
//! default). When a write does not fit, `BufWriter` first sends what it holds and
//! then the write on its own: an HTTP/1 response header (held) followed by a body
//! larger than the room left went out in two `sendto`s and two TCP segments — for
//! every response over about 1.2 KB, every cache hit included. nginx and HAProxy
//! send the header and the body in one `writev`. This writer does the same: the
//! held bytes and the new write go out in one `writev`; what the kernel took of the
//! new write is reported as written, and held bytes it did not take stay held.
//!
//! Otherwise it holds and sends as `BufWriter` does: a write smaller than the
//! buffer that fits is held until one does not or until a flush; a write as large
//! as the buffer, with nothing held, goes straight through; `flush` and `shutdown`
//! send what is held first.
//!
//! Self-contained (tokio and std only) so that freshgate's test suite can compile
//! and test this file as it is (`tests/it/vendored.rs`).

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many of a vectored write's slices go out with the held bytes in one call
/// (the held bytes take one more). tokio's `write_all_buf` passes up to 64, an
/// HTTP/1 chunk is three.
const MAX_SLICES: usize = 15;

/// A buffered writer over `W` that coalesces held bytes with the next write.
pub struct CoalescingWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already sent (a flush interrupted by `Pending`).
    sent: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> CoalescingWriter<W> {
    /// A writer holding up to `capacity` bytes (0: every write goes straight
    /// through).
    pub fn with_capacity(capacity: usize, inner: W) -> Self {
        CoalescingWriter {
            inner,
            buf: Vec::with_capacity(capacity),
            sent: 0,
            capacity,
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The writer under this one. Held bytes are lost.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.sent = 0;
    }

    /// Sends every held byte, one plain write at a time.
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(write_zero())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.clear();
        Poll::Ready(Ok(()))
    }

    /// Sends the held bytes followed by `data` in vectored writes until every
    /// held byte is sent. Returns how many bytes of `data` went with them
    /// (possibly 0); nothing is held afterwards.
    fn poll_send_with(
        &mut self,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let data = &data[..data.len().min(MAX_SLICES)];
        loop {
            let held_len = self.buf.len() - self.sent;
            if held_len == 0 {
                self.clear();
                return Poll::Ready(Ok(0));
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
            slices[0] = IoSlice::new(&self.buf[self.sent..]);
            slices[1..=data.len()].copy_from_slice(data);
            let slices = &slices[..=data.len()];
            match ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, slices)) {
                Ok(0) => return Poll::Ready(Err(write_zero())),
                Ok(n) if n >= held_len => {
                    self.clear();
                    return Poll::Ready(Ok(n - held_len));
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn write_zero() -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        "failed to write the buffered data",
    )
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CoalescingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = data
            .iter()
            .fold(0usize, |sum, s| sum.saturating_add(s.len()));
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        // What fits is held, as `BufWriter` holds it (a write as large as the
        // buffer is not).
        if total <= this.room() && total < this.capacity {
            data.iter().for_each(|s| this.buf.extend_from_slice(s));
            return Poll::Ready(Ok(total));
        }
        if this.sent < this.buf.len() {
            // Held bytes and a write that does not fit: one call for both.
            let taken = if this.inner.is_write_vectored() {
                ready!(this.poll_send_with(cx, data))?
            } else {
                ready!(this.poll_flush_buf(cx))?;
                0
            };
            if taken > 0 {
                return Poll::Ready(Ok(taken));
            }
        }
        // Nothing held now.
        this.clear();
        if total < this.capacity {
            data.iter().for_each(|s| this.buf.extend_from_slice(s));
            return Poll::Ready(Ok(total));
        }
        if this.inner.is_write_vectored() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        }
        // A writer that takes one slice per call (`BufWriter`'s way): hold the
        // leading slices that fit, or send the first one if it is as large as
        // the buffer.
        let mut slices = data.iter().filter(|s| !s.is_empty());
        let first = slices
            .next()
            .expect("a write of some bytes has a non-empty slice");
        if first.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_write(cx, first);
        }
        let mut held = 0;
        for s in std::iter::once(first).chain(slices) {
            if s.len() > this.room() {
                break;
            }
            this.buf.extend_from_slice(s);
            held += s.len();
        }
        Poll::Ready(Ok(held))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for CoalescingWriter<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<W: fmt::Debug> fmt::Debug for CoalescingWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalescingWriter")
            .field("writer", &self.inner)
            .field("held", &(self.buf.len() - self.sent))
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that records each call it takes, takes at most `limit` bytes per
    /// call, and answers `Pending` (waking itself) on every `pending_every`th call.
    /// Not vectored, it takes only the first non-empty slice of a vectored
    /// write, as tokio's default `poll_write_vectored` does.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<Vec<u8>>,
        limit: usize,
        pending_every: usize,
        polls: usize,
        vectored: bool,
        /// An error for the first call.
        fail_first: Option<io::ErrorKind>,
    }

    impl Recorder {
        fn new(limit: usize, pending_every: usize) -> Self {
            Recorder {
                limit,
                pending_every,
                vectored: true,
                ..Default::default()
            }
        }

        fn bytes(&self) -> Vec<u8> {
            self.calls.concat()
        }

        fn take(&mut self, cx: &mut Context<'_>, data: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            self.polls += 1;
            if let Some(kind) = self.fail_first.take() {
                return Poll::Ready(Err(kind.into()));
            }
            if self.pending_every > 0 && self.polls % self.pending_every == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut call = Vec::new();
            let data = if self.vectored {
                data
            } else {
                let first = data.iter().position(|s| !s.is_empty()).unwrap_or(0);
                &data[first..data.len().min(first + 1)]
            };
            for s in data {
                let room = self.limit - call.len();
                call.extend_from_slice(&s[..s.len().min(room)]);
            }
            let n = call.len();
            if n > 0 {
                self.calls.push(call);
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(cx, &[IoSlice::new(data)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(cx, data)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn header() -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Length: 32768\r\n\r\n".to_vec()
    }

    #[tokio::test]
    async fn a_header_and_a_large_body_go_out_in_one_call() {
        let mut w = CoalescingWriter::with_capacity(1460, Recorder::new(usize::MAX, 0));
        let body = vec![b'x'; 32768];
        w.write_all(&header()).await.unwrap();
        assert!(w.get_ref().calls.is_empty(), "a header alone is held");
        w.write_all(&body).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().calls, vec![[header(), body].concat()]);
    }

    #[tokio::test]
    async fn writes_that_fit_are_held_until_the_flush() {
        let mut w = CoalescingWriter::with_capacity(1460, Recorder::new(usize::MAX, 0));
        w.write_all(&header()).await.unwrap();
        w.write_all(&[b'y'; 1024]).await.unwrap();
        assert!(w.get_ref().calls.is_empty());
        w.flush().await.unwrap();
        assert_eq!(
            w.get_ref().calls,
            vec![[header(), vec![b'y'; 1024]].concat()]
        );
    }

    #[tokio::test]
    async fn an_http1_chunk_goes_out_with_the_held_header() {
        let mut w = CoalescingWriter::with_capacity(16, Recorder::new(usize::MAX, 0));
        w.write_all(b"HEAD").await.unwrap();
        let frame = [
            IoSlice::new(b"14\r\n"),
            IoSlice::new(b"twenty bytes of body"),
            IoSlice::new(b"\r\n"),
        ];
        let n = w.write_vectored(&frame).await.unwrap();
        assert_eq!(n, 26);
        assert_eq!(
            w.get_ref().calls,
            vec![b"HEAD14\r\ntwenty bytes of body\r\n".to_vec()]
        );
    }

    /// Every mix of write sizes, buffer capacity, bytes taken per call and
    /// `Pending`s gives the bytes written, in order, each once.
    #[tokio::test]
    async fn bytes_arrive_in_order_and_once_whatever_the_writer_under_takes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for round in 0..400 {
            let capacity = [0, 1, 7, 64, 1460][round % 5];
            let mut inner = Recorder::new(1 + next(3000), [0, 2, 3][next(3)]);
            inner.vectored = round % 7 != 0;
            let mut w = CoalescingWriter::with_capacity(capacity, inner);
            let mut expected = Vec::new();
            for write in 0..1 + next(12) {
                let len = [0, 1, 5, 100, 1400, 5000][next(6)];
                let data: Vec<u8> = (0..len).map(|i| (i + write * 31) as u8).collect();
                if next(3) == 0 {
                    // A vectored write (as an HTTP/1 chunk is), then what it
                    // did not take as a plain one.
                    let (a, b) = data.split_at(len / 2);
                    let n = w
                        .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                        .await
                        .unwrap();
                    w.write_all(&data[n..]).await.unwrap();
                } else {
                    w.write_all(&data).await.unwrap();
                }
                expected.extend_from_slice(&data);
            }
            w.flush().await.unwrap();
            assert_eq!(
                w.get_ref().bytes(),
                expected,
                "round {round}, capacity {capacity}"
            );
            assert!(w.buf.is_empty(), "nothing held after a flush");
        }
    }

    #[tokio::test]
    async fn a_write_as_large_as_the_buffer_is_not_held() {
        let mut w = CoalescingWriter::with_capacity(8, Recorder::new(usize::MAX, 0));
        w.write_all(b"12345678").await.unwrap();
        assert_eq!(w.get_ref().calls, vec![b"12345678".to_vec()]);
    }

    #[tokio::test]
    async fn a_write_of_many_slices_sends_fifteen_with_the_held_bytes() {
        let mut w = CoalescingWriter::with_capacity(16, Recorder::new(usize::MAX, 0));
        w.write_all(b"HEAD").await.unwrap();
        let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'a' + i; 5]).collect();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let n = w.write_vectored(&slices).await.unwrap();
        assert_eq!(n, 75);
        assert_eq!(
            w.get_ref().calls,
            vec![[b"HEAD".to_vec(), parts[..15].concat()].concat()]
        );
    }

    #[tokio::test]
    async fn a_call_that_takes_exactly_the_held_bytes_goes_on_with_the_write() {
        let mut w = CoalescingWriter::with_capacity(16, Recorder::new(4, 0));
        w.write_all(b"HEAD").await.unwrap();
        let n = w.write(&[b'x'; 32]).await.unwrap();
        assert_eq!(n, 4, "a write that took bytes reports them, never 0");
        assert_eq!(w.get_ref().calls, vec![b"HEAD".to_vec(), b"xxxx".to_vec()]);
    }

    #[tokio::test]
    async fn an_interrupted_call_is_made_again() {
        let mut inner = Recorder::new(usize::MAX, 0);
        inner.fail_first = Some(io::ErrorKind::Interrupted);
        let mut w = CoalescingWriter::with_capacity(16, inner);
        w.write_all(b"HEAD").await.unwrap();
        w.write_all(&[b'x'; 32]).await.unwrap();
        assert_eq!(
            w.get_ref().calls,
            vec![[b"HEAD".to_vec(), vec![b'x'; 32]].concat()]
        );
    }

    #[tokio::test]
    async fn a_writer_of_one_slice_per_call_gets_the_small_slices_held() {
        let mut inner = Recorder::new(usize::MAX, 0);
        inner.vectored = false;
        let mut w = CoalescingWriter::with_capacity(16, inner);
        let frame = [
            IoSlice::new(b"14\r\n"),
            IoSlice::new(b"twenty bytes of body"),
            IoSlice::new(b"\r\n"),
        ];
        assert_eq!(
            w.write_vectored(&frame).await.unwrap(),
            4,
            "the chunk size is held"
        );
        assert!(w.get_ref().calls.is_empty());
        assert_eq!(w.write_vectored(&frame[1..]).await.unwrap(), 20);
        assert_eq!(
            w.get_ref().calls,
            vec![b"14\r\n".to_vec(), b"twenty bytes of body".to_vec()]
        );
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_loop() {
        let mut w = CoalescingWriter::with_capacity(8, Recorder::new(0, 0));
        w.write_all(b"held").await.unwrap();
        let write = w.write_all(&[0; 64]);
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), write)
            .await
            .expect("an answer, not a loop")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }
}

//! A request head too large to parse still gets a Matrix error.
//!
//! actix-http refuses a request head (request line and headers) larger than 128 KiB with a bare
//! `431` and no body, from inside its dispatcher where no handler or middleware runs. Every
//! other error Hearth sends is Matrix JSON, so each connection is wrapped in [`HeadLimit`],
//! which watches the bytes actix reads while a request head is expected: at the start of the
//! connection and after each final response it writes (HTTP/1.1 clients send the next request
//! only then). Once the end of the head (`\r\n\r\n`) passes, it stops looking until the next
//! response, so bodies of any size stream through untouched; an interim `100 Continue` does not
//! count as a response. If [`MAX_HEAD`] bytes arrive without the end of a head, it writes
//! `431 M_TOO_LARGE` as Matrix JSON itself and ends the connection, before actix's own limit.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head let through: below actix-http's 128 KiB, so this answer comes first.
pub const MAX_HEAD: usize = 120 * 1024;

/// The answer to an oversized head; the connection closes after it.
static TOO_LARGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = format!(
        r#"{{"errcode":"M_TOO_LARGE","error":"The request line and headers exceed {} KiB"}}"#,
        MAX_HEAD / 1024
    );
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         access-control-allow-origin: *\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Where the connection is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A head is expected: `read` bytes of it so far, `tail` the last bytes seen (to find a
    /// `\r\n\r\n` split across reads).
    Head { read: usize, tail: [u8; 3] },
    /// The head has ended; a body (or nothing) until the next response.
    Body,
    /// The head was too large: `written` bytes of [`TOO_LARGE`] sent so far.
    Refusing { written: usize },
    /// The refusal is sent; reads end.
    Closed,
}

/// An IO stream that refuses oversized request heads with Matrix JSON (see the module note).
pub struct HeadLimit<T> {
    inner: T,
    state: State,
}

impl<T> HeadLimit<T> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: T) -> Self {
        HeadLimit {
            inner,
            state: State::Head { read: 0, tail: [0; 3] },
        }
    }
}

/// Advances the head watch over `bytes` (just read): the new state.
fn watch(read: usize, tail: [u8; 3], bytes: &[u8]) -> State {
    const END: &[u8] = b"\r\n\r\n";
    // Where the head ends within `bytes` (just past its `\r\n\r\n`): across the seam with
    // the last bytes read before, or inside `bytes`.
    let mut seam = [0u8; 6];
    let first = bytes.len().min(3);
    seam[..3].copy_from_slice(&tail);
    seam[3..3 + first].copy_from_slice(&bytes[..first]);
    let end = seam[..3 + first]
        .windows(4)
        .position(|w| w == END)
        .map(|at| at + 1)
        .or_else(|| bytes.windows(4).position(|w| w == END).map(|at| at + 4));
    let length = read + end.unwrap_or(bytes.len());
    if length > MAX_HEAD {
        return State::Refusing { written: 0 };
    }
    if end.is_some() {
        return State::Body;
    }
    let mut joined = [0u8; 6];
    joined[..3].copy_from_slice(&tail);
    joined[3..3 + first].copy_from_slice(&bytes[bytes.len() - first..]);
    let mut tail = [0; 3];
    tail.copy_from_slice(&joined[first..first + 3]);
    State::Head { read: length, tail }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadLimit<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Refusing { written } => {
                    let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &TOO_LARGE[written..]))?;
                    let written = written + n;
                    if n == 0 || written == TOO_LARGE.len() {
                        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                        this.state = State::Closed;
                    } else {
                        this.state = State::Refusing { written };
                    }
                }
                State::Body => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Head { read, tail } => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let state = watch(read, tail, &buf.filled()[before..]);
                    if matches!(state, State::Refusing { .. }) {
                        // Nothing of an oversized head reaches the parser.
                        buf.set_filled(before);
                    }
                    this.state = state;
                    if !matches!(this.state, State::Refusing { .. }) {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadLimit<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::Refusing { .. } | State::Closed) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "request head refused")));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, bytes))?;
        // A response other than an interim `100 Continue` starts: the next request's head is
        // what comes next.
        if this.state == State::Body && bytes.starts_with(b"HTTP/1.1 ") && !bytes.starts_with(b"HTTP/1.1 100 ") {
            this.state = State::Head { read: 0, tail: [0; 3] };
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_answer_has_the_length_it_says() {
        let text = std::str::from_utf8(&TOO_LARGE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errcode"], "M_TOO_LARGE");
    }

    #[test]
    fn a_head_read_byte_by_byte_ends_at_its_last_byte() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut state = State::Head { read: 0, tail: [0; 3] };
        for (i, byte) in head.iter().enumerate() {
            let State::Head { read, tail } = state else {
                panic!("ended early at {i}")
            };
            state = watch(read, tail, std::slice::from_ref(byte));
        }
        assert_eq!(state, State::Body);
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let state = watch(0, [0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n\r");
        let State::Head { read, tail } = state else {
            panic!("{state:?}")
        };
        assert_eq!(watch(read, tail, b"\n"), State::Body);
    }

    #[test]
    fn a_head_past_the_limit_is_refused_and_a_body_is_not_watched() {
        let mut state = watch(0, [0; 3], b"GET / HTTP/1.1\r\n");
        for _ in 0..200 {
            let State::Head { read, tail } = state else { break };
            state = watch(read, tail, &[b'a'; 1024]);
        }
        assert_eq!(state, State::Refusing { written: 0 });
        // A head that ends leaves what follows alone, however long.
        assert_eq!(
            watch(0, [0; 3], b"PUT /x HTTP/1.1\r\ncontent-length: 9999999\r\n\r\nbody"),
            State::Body
        );
        // A head past the limit is refused even when its end arrives in the same read.
        let mut huge = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(watch(0, [0; 3], &huge), State::Refusing { written: 0 });
    }
}

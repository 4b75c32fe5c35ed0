//! Stock gRPC clients on the Unix socket. grpc-core (Python grpcio ≥ 1.57, C++, Ruby), grpc-java,
//! grpc-swift and `grpcurl -unix` send the socket path (some percent-encoded) as the request's
//! `:authority`. The server's HTTP/2 layer (h2) parses `:authority` as a URI authority, finds
//! `/` or `%2F` in it and resets the stream with PROTOCOL_ERROR (upstream: hyperium/h2 pull
//! request 487, open for years). A Unix socket has no authority to check, so on that socket, and
//! only there, the bytes the client sends pass through [`AuthorityRewrite`] before h2 reads
//! them: every header block is decoded (HPACK, RFC 7541), an `:authority` that h2 would refuse
//! as a URI authority becomes `localhost` (the convention of grpc-go and Kubernetes), and the
//! block is encoded again for h2. Every other frame passes through byte for byte. The TCP/TLS
//! listener does not use this: its clients' authorities are validated as h2 does.
//!
//! Re-encoding *every* block, not only the ones changed, keeps the two HPACK states consistent:
//! the client's encoder and this decoder share one dynamic table, this encoder and h2's decoder
//! another.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The HPACK table size both h2 and clients start with; h2's server never announces another,
/// so a client may not ask for more.
const HPACK_TABLE_SIZE: usize = 4096;
/// The frame size every HTTP/2 peer must accept; re-encoded blocks are cut at it.
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// A header block larger than this (over all its frames) closes the connection: h2 would
/// refuse it anyway (its header list limit is 16 KiB by default), and it bounds what one client
/// makes the agent buffer.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// What local clients get instead of an authority h2 would refuse.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("header block of stream {stream} is over {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge { stream: u32 },
    #[error("stream {stream}: frame type {got:#x} inside a header block (CONTINUATION expected)")]
    NotContinuation { stream: u32, got: u8 },
    #[error("stream {stream}: HEADERS frame shorter than its padding and priority fields")]
    ShortHeaders { stream: u32 },
    #[error("stream {stream}: header block cannot be decoded: {reason}")]
    Hpack { stream: u32, reason: String },
}

/// Where the byte stream stands.
enum State {
    /// Before the client's connection preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Copying the rest of a frame that is not part of a header block.
    Passing { left: usize },
    /// Collecting a HEADERS or CONTINUATION frame's payload.
    Collecting {
        kind: u8,
        flags: u8,
        stream: u32,
        len: usize,
    },
    /// Not HTTP/2 with prior knowledge: everything passes, h2 answers it as it would.
    Verbatim,
}

/// A header block being gathered across HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    /// The PRIORITY fields, kept as sent.
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

/// The client-to-server half of one Unix-socket connection: [`feed`](Self::feed) takes bytes as
/// they arrive and gives out the bytes h2 should read.
pub struct AuthorityRewrite {
    state: State,
    pending: BytesMut,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Default for AuthorityRewrite {
    fn default() -> Self {
        AuthorityRewrite {
            state: State::Preface,
            pending: BytesMut::new(),
            block: None,
            decoder: {
                let mut d = Decoder::new();
                d.set_max_allowed_table_size(HPACK_TABLE_SIZE);
                d
            },
            encoder: Encoder::new(),
        }
    }
}

impl AuthorityRewrite {
    /// Takes `input` and appends to `out` every byte that is ready for h2; incomplete frames wait
    /// for the next call. An error means the connection cannot go on (h2 would have closed it
    /// too, or the client is abusive).
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), RewriteError> {
        self.pending.extend_from_slice(input);
        loop {
            match self.state {
                State::Verbatim => {
                    out.extend_from_slice(&self.pending.split());
                    return Ok(());
                }
                State::Preface => {
                    let n = self.pending.len().min(PREFACE.len());
                    if self.pending[..n] != PREFACE[..n] {
                        self.state = State::Verbatim;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(&self.pending.split_to(PREFACE.len()));
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if self.pending.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.pending[..FRAME_HEADER_LEN];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if let Some(block) = &self.block
                        && kind != CONTINUATION
                    {
                        return Err(RewriteError::NotContinuation {
                            stream: block.stream,
                            got: kind,
                        });
                    }
                    if kind == HEADERS || kind == CONTINUATION {
                        self.pending.advance(FRAME_HEADER_LEN);
                        self.state = State::Collecting {
                            kind,
                            flags,
                            stream,
                            len,
                        };
                    } else {
                        out.extend_from_slice(&self.pending.split_to(FRAME_HEADER_LEN));
                        self.state = State::Passing { left: len };
                    }
                }
                State::Passing { left } => {
                    let n = left.min(self.pending.len());
                    out.extend_from_slice(&self.pending.split_to(n));
                    if n < left {
                        self.state = State::Passing { left: left - n };
                        return Ok(());
                    }
                    self.state = State::FrameHeader;
                }
                State::Collecting {
                    kind,
                    flags,
                    stream,
                    len,
                } => {
                    if len > MAX_HEADER_BLOCK {
                        return Err(RewriteError::BlockTooLarge { stream });
                    }
                    if self.pending.len() < len {
                        return Ok(());
                    }
                    let payload = self.pending.split_to(len);
                    self.state = State::FrameHeader;
                    self.collect(kind, flags, stream, payload, out)?;
                }
            }
        }
    }

    /// Adds one HEADERS or CONTINUATION payload to the block; a complete block goes out.
    fn collect(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        let block = match (kind, self.block.take()) {
            (HEADERS, _) => {
                let short = || RewriteError::ShortHeaders { stream };
                let pad = if flags & PADDED != 0 {
                    let pad = usize::from(*payload.first().ok_or_else(short)?);
                    payload.advance(1);
                    pad
                } else {
                    0
                };
                let priority = if flags & PRIORITY != 0 {
                    let fields: [u8; 5] = payload
                        .get(..5)
                        .and_then(|f| f.try_into().ok())
                        .ok_or_else(short)?;
                    payload.advance(5);
                    Some(fields)
                } else {
                    None
                };
                if payload.len() < pad {
                    return Err(short());
                }
                payload.truncate(payload.len() - pad);
                Block {
                    stream,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority,
                    fragment: payload,
                }
            }
            (_, Some(mut block)) if block.stream == stream => {
                block.fragment.extend_from_slice(&payload);
                block
            }
            // A CONTINUATION with no block open, or for another stream: h2 answers that with a
            // connection error of its own, so it gets the frame unchanged.
            _ => {
                put_frame_header(out, payload.len(), kind, flags, stream);
                out.extend_from_slice(&payload);
                return Ok(());
            }
        };
        if block.fragment.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::BlockTooLarge { stream });
        }
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        let encoded = self.reencode(&block)?;
        write_block(out, &block, encoded);
        Ok(())
    }

    /// The block's headers, decoded, with a local authority, encoded again.
    fn reencode(&mut self, block: &Block) -> Result<Bytes, RewriteError> {
        let mut headers =
            self.decoder
                .decode(&block.fragment)
                .map_err(|e| RewriteError::Hpack {
                    stream: block.stream,
                    reason: format!("{e:?}"),
                })?;
        for (name, value) in &mut headers {
            if name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err() {
                *value = LOCAL_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        Ok(Bytes::from(encoded))
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    // Lengths here are at most MIN_MAX_FRAME_SIZE or a length read from 24 bits.
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A HEADERS frame and as many CONTINUATION frames as the encoded block needs, each within the
/// frame size every peer accepts, without padding.
fn write_block(out: &mut BytesMut, block: &Block, mut encoded: Bytes) {
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    let first = encoded.len().min(MIN_MAX_FRAME_SIZE - priority.len());
    let mut chunk = encoded.split_to(first);
    let mut kind = HEADERS;
    let mut flags = block.flags;
    loop {
        let last = encoded.is_empty();
        let end = if last { END_HEADERS } else { 0 };
        let extra = if kind == HEADERS { priority } else { &[][..] };
        put_frame_header(
            out,
            extra.len() + chunk.len(),
            kind,
            flags | end,
            block.stream,
        );
        out.extend_from_slice(extra);
        out.extend_from_slice(&chunk);
        if last {
            return;
        }
        chunk = encoded.split_to(encoded.len().min(MIN_MAX_FRAME_SIZE));
        kind = CONTINUATION;
        flags = 0;
    }
}

/// A Unix-socket connection whose incoming bytes pass through [`AuthorityRewrite`]; writes go
/// straight to the socket.
pub struct LocalStream {
    stream: UnixStream,
    rewrite: AuthorityRewrite,
    ready: BytesMut,
    closed: bool,
}

impl LocalStream {
    pub fn new(stream: UnixStream) -> LocalStream {
        LocalStream {
            stream,
            rewrite: AuthorityRewrite::default(),
            ready: BytesMut::new(),
            closed: false,
        }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.stream
    }
}

impl AsyncRead for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Reads until some bytes are ready for h2: a partial frame yields none yet.
        while this.ready.is_empty() && !this.closed {
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.stream).poll_read(cx, &mut raw_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if raw_buf.filled().is_empty() => this.closed = true,
                Poll::Ready(Ok(())) => this
                    .rewrite
                    .feed(raw_buf.filled(), &mut this.ready)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            }
        }
        let n = this.ready.len().min(buf.remaining());
        buf.put_slice(&this.ready.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// A client's request headers for `authority`, with an `x-large` header of `extra` bytes.
    fn request(authority: &str, extra: usize) -> Headers {
        let mut headers: Headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", authority),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        if extra > 0 {
            headers.push((b"x-large".to_vec(), vec![b'v'; extra]));
        }
        headers
    }

    fn encode(encoder: &mut Encoder, headers: &Headers) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Frames as h2 would read them: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// The header blocks h2 would see, decoded with one HPACK state as h2 keeps it, with their
    /// stream and the HEADERS frame's flags.
    fn seen_by_h2(bytes: &[u8]) -> Vec<(u32, u8, Headers)> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut open: Option<(u32, u8, Vec<u8>)> = None;
        for (kind, flags, stream, payload) in frames(bytes) {
            match kind {
                HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(flags & PADDED, 0, "padding is dropped");
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    open = Some((stream, flags, payload[skip..].to_vec()));
                }
                CONTINUATION => open.as_mut().unwrap().2.extend_from_slice(&payload),
                _ => {
                    assert!(open.is_none(), "no frame inside a header block");
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                let (stream, first_flags, block) = open.take().unwrap();
                blocks.push((stream, first_flags, decoder.decode(&block).unwrap()));
            }
        }
        blocks
    }

    fn authority(headers: &Headers) -> String {
        let (_, v) = headers.iter().find(|(n, _)| n == b":authority").unwrap();
        String::from_utf8(v.clone()).unwrap()
    }

    fn without_authority(headers: &Headers) -> Headers {
        headers
            .iter()
            .filter(|(n, _)| n != b":authority")
            .cloned()
            .collect()
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut rewrite = AuthorityRewrite::default();
        let mut out = BytesMut::new();
        for piece in input.chunks(chunk) {
            rewrite.feed(piece, &mut out).unwrap();
        }
        out.to_vec()
    }

    /// A client connection: preface, SETTINGS, then per request a HEADERS (every second one
    /// split into HEADERS and CONTINUATION) and a DATA frame.
    fn client(authorities: &[&str]) -> (Vec<u8>, Vec<Headers>) {
        let mut encoder = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        let mut sent = Vec::new();
        for (i, a) in authorities.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let headers = request(a, 0);
            let block = encode(&mut encoder, &headers);
            sent.push(headers);
            if i % 2 == 1 {
                let (a, b) = block.split_at(block.len() / 2);
                bytes.extend(frame(HEADERS, 0, stream, a));
                bytes.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            } else {
                bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            bytes.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x05hello"));
        }
        (bytes, sent)
    }

    #[test]
    fn socket_paths_become_localhost_and_valid_authorities_stay() {
        let authorities = [
            "/run/hvagent/hvagent.sock",
            "%2Frun%2Fhvagent%2Fhvagent.sock",
            "localhost",
            "node-7.example:50051",
            "/run/hvagent/hvagent.sock",
        ];
        let (input, sent) = client(&authorities);
        // Whatever the read sizes, h2 gets the same bytes.
        let whole = run(&input, input.len());
        for chunk in [1, 7, 9, 64] {
            assert_eq!(run(&input, chunk), whole, "read size {chunk}");
        }
        let blocks = seen_by_h2(&whole);
        assert_eq!(blocks.len(), authorities.len());
        for (i, ((stream, flags, headers), sent)) in blocks.iter().zip(&sent).enumerate() {
            assert_eq!(*stream, 2 * i as u32 + 1);
            assert_eq!(flags & END_STREAM, 0);
            let want = match authorities[i] {
                a if http::uri::Authority::try_from(a).is_ok() => a,
                _ => "localhost",
            };
            assert_eq!(authority(headers), want, "request {i}");
            // Everything else arrives unchanged, in order.
            assert_eq!(without_authority(headers), without_authority(sent));
        }
        assert_eq!(authority(&blocks[2].2), "localhost");
        assert_eq!(authority(&blocks[3].2), "node-7.example:50051");
        // The other frames pass byte for byte.
        let others = |bytes: &[u8]| {
            frames(bytes)
                .into_iter()
                .filter(|f| f.0 != HEADERS && f.0 != CONTINUATION)
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&whole), others(&input));
    }

    #[test]
    fn padding_and_priority_are_read_and_large_blocks_are_split() {
        let mut encoder = Encoder::new();
        let block = encode(&mut encoder, &request("/x.sock", 40_000));
        let mut payload = vec![3u8];
        payload.extend([0x80, 0, 0, 1, 15]);
        payload.extend_from_slice(&block[..20_000]);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &block[20_000..]));
        let out = run(&input, 1000);
        let frames = frames(&out);
        assert!(frames.len() >= 3, "a 40 kB block needs CONTINUATION frames");
        assert!(frames.iter().all(|f| f.3.len() <= MIN_MAX_FRAME_SIZE));
        assert_eq!(
            frames[0].1 & (PRIORITY | END_STREAM | END_HEADERS),
            PRIORITY | END_STREAM
        );
        assert_eq!(&frames[0].3[..5], &[0x80, 0, 0, 1, 15], "priority kept");
        assert_eq!(frames.last().unwrap().1, END_HEADERS);
        let blocks = seen_by_h2(&out);
        assert_eq!(authority(&blocks[0].2), "localhost");
        assert!(blocks[0].2.iter().any(|(_, v)| v.len() == 40_000));
    }

    #[test]
    fn broken_streams_are_refused_and_strangers_pass_verbatim() {
        let mut encoder = Encoder::new();
        let block = encode(&mut encoder, &request("/x.sock", 0));
        let refused = |frames: &[Vec<u8>]| {
            let mut input = PREFACE.to_vec();
            input.extend(frames.concat());
            AuthorityRewrite::default().feed(&input, &mut BytesMut::new())
        };
        assert_eq!(
            refused(&[frame(HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"data")]),
            Err(RewriteError::NotContinuation { stream: 1, got: 0 })
        );
        assert_eq!(
            refused(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2])]),
            Err(RewriteError::ShortHeaders { stream: 1 })
        );
        assert!(matches!(
            refused(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff])]),
            Err(RewriteError::Hpack { stream: 1, .. })
        ));
        // A table larger than h2 allows is refused, as h2 would.
        assert!(matches!(
            refused(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0xff, 0x03])]),
            Err(RewriteError::Hpack { stream: 1, .. })
        ));
        assert_eq!(
            refused(&[vec![0x10, 0, 1, HEADERS, 0, 0, 0, 0, 1]]),
            Err(RewriteError::BlockTooLarge { stream: 1 })
        );

        // HTTP/1 and other strangers reach h2 unchanged, which answers them as always.
        let http1 = b"GET / HTTP/1.1\r\nHost: /run/x.sock\r\n\r\n";
        assert_eq!(run(http1, 5), http1.to_vec());
    }
}

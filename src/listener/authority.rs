//! Rewriting the HTTP/2 `:authority` of requests arriving on a Unix socket.
//!
//! gRPC clients disagree on what a Unix socket's authority is: grpc-go (so
//! bb_worker) sends `localhost`, C-core (Python's grpcio) the percent-encoded
//! socket path, grpc-java the raw path. The HTTP/2 server under tonic refuses
//! the last two as malformed (`RST_STREAM(PROTOCOL_ERROR)`) before any
//! handler runs, while bb_runner, a grpc-go server, accepts anything. The
//! authority means nothing on a local socket, so [`AuthorityRewriting`] sits
//! between the socket and the HTTP/2 server and replaces it with `localhost`.
//!
//! Headers travel HPACK-compressed, and HPACK is stateful: each side keeps
//! a dynamic table that every header block may change. So the wrapper
//! decodes *every* header block the client sends with a decoder that follows
//! the client's table, and re-encodes *every* block with an encoder of its
//! own, whose table the server's decoder then follows. Passing any block
//! through unchanged would feed the server bytes that refer to the client's
//! table, not ours. Frames other than HEADERS and CONTINUATION pass through
//! untouched; the server's writes are not looked at.
//!
//! A connection whose first request carries an authority the server accepts
//! as it is (grpc-go's `localhost`, so bb_worker's) is handed on untouched
//! from then on, at no cost: a gRPC channel uses one authority for all its
//! calls, and not rewriting any block keeps the tables trivially in sync.
//! Only connections that need it (C-core, Java) pay for decoding and
//! re-encoding.
//!
//! What is buffered is bounded: one frame of at most [`MAX_FRAME_SIZE`]
//! bytes, and one header block (HEADERS plus CONTINUATIONs) of at most
//! [`MAX_HEADER_LIST_SIZE`] encoded bytes, which also bounds its decoded
//! size. A client exceeding them, or breaking the framing rules that the
//! rewriting depends on, loses its connection (an I/O error the server sees
//! as the connection failing), as the server itself would close it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, ReadBuf};

use super::huffman;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload the server accepts (its SETTINGS_MAX_FRAME_SIZE,
/// the protocol's initial value). The server is configured with the same.
pub const MAX_FRAME_SIZE: usize = 16_384;

/// Largest header list the server accepts (its SETTINGS_MAX_HEADER_LIST_SIZE,
/// in RFC 9113's accounting: name + value + 32 per field). The server is
/// configured with the same.
pub const MAX_HEADER_LIST_SIZE: usize = 16_384;

/// The HPACK dynamic table size both the client's encoder and ours use:
/// the protocol's initial SETTINGS_HEADER_TABLE_SIZE, which the server never
/// changes.
const HEADER_TABLE_SIZE: usize = 4_096;

/// What every request's `:authority` becomes: grpc-go's choice for Unix
/// sockets, which every server accepts.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// CONTINUATION frames allowed in one header block. A block within the
/// header list limit needs at most two frames of the maximum size; empty
/// CONTINUATIONs would otherwise let a client keep the connection parsing
/// without ever finishing a block.
const MAX_CONTINUATIONS: usize = 16;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The client's side of an HTTP/2 connection with every request's
/// `:authority` replaced by `localhost`; writes pass through.
pub struct AuthorityRewriting<S> {
    inner: S,
    rewriter: Rewriter,
    /// Raw bytes from the client not yet parsed (at most a frame and a read).
    input: BytesMut,
    /// Bytes ready for the server.
    output: BytesMut,
    /// The client closed its side; what is left of `input` has been handed on.
    eof: bool,
}

impl<S> AuthorityRewriting<S> {
    /// Wraps `inner`, whose first bytes (already read from it) are `prefix`.
    pub fn new(inner: S, prefix: &[u8]) -> Self {
        AuthorityRewriting {
            inner,
            rewriter: Rewriter::new(),
            input: BytesMut::from(prefix),
            output: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewriting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.mode == Mode::PassThrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.rewriter.process(&mut this.input, &mut this.output)?;
            if !this.output.is_empty() {
                continue;
            }
            // Need more bytes from the client.
            this.input.reserve(READ_CHUNK);
            let spare = this.input.spare_capacity_mut();
            let mut read = ReadBuf::uninit(spare);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                // A truncated frame is handed on as is: the server reports
                // the connection error.
                this.eof = true;
                let rest = this.input.split();
                this.output.extend_from_slice(&rest);
                continue;
            }
            // SAFETY: ReadBuf::filled() covers bytes the reader initialised,
            // at the start of the spare capacity, so they are now part of
            // the buffer's initialised length.
            unsafe { this.input.advance_mut(n) };
        }
    }
}

write_through_to_inner!(AuthorityRewriting);

/// Why a connection is closed by the rewriting.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("HTTP/2 frame of {length} bytes exceeds the maximum frame size {MAX_FRAME_SIZE}")]
    FrameTooLarge { length: usize },
    #[error("header block exceeds the maximum header list size {MAX_HEADER_LIST_SIZE}")]
    HeaderListTooLarge,
    #[error("header block split into more than {MAX_CONTINUATIONS} CONTINUATION frames")]
    TooManyContinuations,
    #[error(
        "HTTP/2 frame of type {frame_type:#x} where a CONTINUATION of stream {stream_id} was due"
    )]
    ExpectedContinuation { frame_type: u8, stream_id: u32 },
    #[error("CONTINUATION frame without a HEADERS frame before it")]
    UnexpectedContinuation,
    #[error("a client must not send PUSH_PROMISE")]
    PushPromise,
    #[error("malformed HEADERS frame (padding or priority longer than the frame)")]
    MalformedHeaders,
    #[error("HPACK decoding failed: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

impl From<RewriteError> for io::Error {
    fn from(err: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// A header block whose CONTINUATION frames are still due.
struct PendingBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The 5 priority bytes of the HEADERS frame, if it had them.
    priority: Option<[u8; 5]>,
    /// The encoded block so far.
    fragment: Vec<u8>,
    /// CONTINUATION frames received for it.
    continuations: usize,
    /// The frames as received, while deciding whether to rewrite.
    raw: Vec<u8>,
}

/// Whether header blocks are rewritten on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Until the first header block is complete.
    Deciding,
    /// The first request's authority was refused by the server as it was:
    /// every block is decoded and re-encoded.
    Rewriting,
    /// The first request's authority is acceptable as it is: everything is
    /// handed on untouched.
    PassThrough,
}

/// The frame-level state of one connection, independent of I/O so that it
/// can be tested on byte strings.
struct Rewriter {
    mode: Mode,
    preface_left: usize,
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// A header block with its Huffman-coded strings written out, kept
    /// between blocks for its allocation.
    plain: Vec<u8>,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        // The client may only grow its table to what the server allows.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            mode: Mode::Deciding,
            preface_left: PREFACE.len(),
            pending: None,
            decoder,
            encoder,
            plain: Vec::new(),
        }
    }

    /// Moves every complete frame from `input` to `output`, rewriting header
    /// blocks; leaves an incomplete frame in `input`.
    fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Result<(), RewriteError> {
        if self.mode == Mode::PassThrough {
            output.extend_from_slice(&input.split());
            return Ok(());
        }
        if self.preface_left > 0 {
            // The preface is handed on unchecked; the server checks it.
            let n = self.preface_left.min(input.len());
            output.extend_from_slice(&input.split_to(n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        while input.len() >= FRAME_HEADER_LEN {
            let length = (usize::from(input[0]) << 16)
                | (usize::from(input[1]) << 8)
                | usize::from(input[2]);
            if length > MAX_FRAME_SIZE {
                return Err(RewriteError::FrameTooLarge { length });
            }
            if input.len() < FRAME_HEADER_LEN + length {
                input.reserve(FRAME_HEADER_LEN + length - input.len());
                return Ok(());
            }
            let frame = input.split_to(FRAME_HEADER_LEN + length);
            let frame_type = frame[3];
            let flags = frame[4];
            let stream_id =
                u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[FRAME_HEADER_LEN..];
            if let Some(pending) = &self.pending {
                if frame_type != TYPE_CONTINUATION || stream_id != pending.stream_id {
                    return Err(RewriteError::ExpectedContinuation {
                        frame_type,
                        stream_id: pending.stream_id,
                    });
                }
            }
            match frame_type {
                TYPE_HEADERS => {
                    let block = headers_fragment(flags, payload)?;
                    self.pending = Some(PendingBlock {
                        stream_id,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority: block.priority,
                        fragment: Vec::new(),
                        continuations: 0,
                        raw: Vec::new(),
                    });
                    self.keep_raw(&frame);
                    self.append(block.fragment, flags, output)?;
                }
                TYPE_CONTINUATION => {
                    let Some(pending) = self.pending.as_mut() else {
                        return Err(RewriteError::UnexpectedContinuation);
                    };
                    pending.continuations += 1;
                    if pending.continuations > MAX_CONTINUATIONS {
                        return Err(RewriteError::TooManyContinuations);
                    }
                    self.keep_raw(&frame);
                    self.append(payload, flags, output)?;
                }
                TYPE_PUSH_PROMISE => return Err(RewriteError::PushPromise),
                _ => output.extend_from_slice(&frame),
            }
            if self.mode == Mode::PassThrough {
                output.extend_from_slice(&input.split());
                return Ok(());
            }
        }
        Ok(())
    }

    /// Keeps the frames of the first header block as they came, to hand
    /// them on unchanged if the connection turns out not to need rewriting.
    fn keep_raw(&mut self, frame: &[u8]) {
        if self.mode == Mode::Deciding {
            if let Some(pending) = self.pending.as_mut() {
                pending.raw.extend_from_slice(frame);
            }
        }
    }

    /// Adds a fragment to the pending block; at END_HEADERS, rewrites it.
    fn append(
        &mut self,
        fragment: &[u8],
        flags: u8,
        output: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(RewriteError::UnexpectedContinuation);
        };
        if pending.fragment.len() + fragment.len() > MAX_HEADER_LIST_SIZE {
            return Err(RewriteError::HeaderListTooLarge);
        }
        pending.fragment.extend_from_slice(fragment);
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.pending.take() else {
            return Err(RewriteError::UnexpectedContinuation);
        };
        let (encoded, authority_accepted) = self.rewrite_block(&block.fragment)?;
        if self.mode == Mode::Deciding {
            if authority_accepted {
                self.mode = Mode::PassThrough;
                output.extend_from_slice(&block.raw);
                return Ok(());
            }
            self.mode = Mode::Rewriting;
        }
        write_header_frames(&block, &encoded, output);
        Ok(())
    }

    /// Decodes one complete header block, replaces `:authority`, and
    /// encodes it again with our own table. Also says whether the server
    /// would have accepted the block's authority (or its absence) as it was.
    fn rewrite_block(&mut self, block: &[u8]) -> Result<(Vec<u8>, bool), RewriteError> {
        // Huffman-coded strings written out plainly first: the decoder
        // would build a table for each (see `huffman`).
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let decoded_block = match huffman::plain_strings(block, &mut plain) {
            Ok(true) => plain.as_slice(),
            // None to write out, or a malformed block: the decoder says how.
            _ => block,
        };
        let mut encoded = Vec::with_capacity(decoded_block.len() + LOCAL_AUTHORITY.len());
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut authority_accepted = true;
        let Rewriter {
            decoder, encoder, ..
        } = self;
        let decoded = decoder.decode_with_cb(decoded_block, |name, value| {
            // Indexed fields can make a small block decode to a large
            // list: stop encoding fields past the server's limit, but
            // decode to the end so that the dynamic table stays right.
            list_size += name.len() + value.len() + 32;
            if list_size > MAX_HEADER_LIST_SIZE {
                too_large = true;
                return;
            }
            let value = if name.as_ref() == b":authority" {
                // What the HTTP/2 server checks before any handler runs.
                authority_accepted = http::uri::Authority::try_from(value.as_ref()).is_ok();
                LOCAL_AUTHORITY
            } else {
                value.as_ref()
            };
            // Each field is encoded as it is decoded, without a copy;
            // writing to a Vec cannot fail.
            let _ = encoder.encode_header_into((name.as_ref(), value), &mut encoded);
        });
        self.plain = plain;
        decoded.map_err(RewriteError::Hpack)?;
        if too_large {
            return Err(RewriteError::HeaderListTooLarge);
        }
        Ok((encoded, authority_accepted))
    }
}

/// The header block fragment of a HEADERS frame, without padding.
struct HeadersFragment<'a> {
    priority: Option<[u8; 5]>,
    fragment: &'a [u8],
}

fn headers_fragment(flags: u8, payload: &[u8]) -> Result<HeadersFragment<'_>, RewriteError> {
    let mut rest = payload;
    let mut padding = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&pad_length, after) = rest.split_first().ok_or(RewriteError::MalformedHeaders)?;
        padding = usize::from(pad_length);
        rest = after;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let bytes: [u8; 5] = rest
            .get(..5)
            .and_then(|b| b.try_into().ok())
            .ok_or(RewriteError::MalformedHeaders)?;
        priority = Some(bytes);
        rest = &rest[5..];
    }
    if padding > rest.len() {
        return Err(RewriteError::MalformedHeaders);
    }
    Ok(HeadersFragment {
        priority,
        fragment: &rest[..rest.len() - padding],
    })
}

/// Writes a re-encoded block as one HEADERS frame and as many CONTINUATION
/// frames as the maximum frame size requires (our encoder does not use
/// Huffman coding, so a block can grow).
fn write_header_frames(block: &PendingBlock, encoded: &[u8], output: &mut BytesMut) {
    let priority_len = if block.priority.is_some() { 5 } else { 0 };
    let first_len = encoded.len().min(MAX_FRAME_SIZE - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    put_frame_header(
        output,
        priority_len + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream_id,
    );
    if let Some(priority) = block.priority {
        output.extend_from_slice(&priority);
    }
    output.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
        rest = after;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(
            output,
            chunk.len(),
            TYPE_CONTINUATION,
            flags,
            block.stream_id,
        );
        output.extend_from_slice(chunk);
    }
}

fn put_frame_header(
    output: &mut BytesMut,
    length: usize,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
) {
    // length ≤ MAX_FRAME_SIZE < 2^24, so it fits the 24-bit field.
    output.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    output.put_u8(frame_type);
    output.put_u8(flags);
    output.put_u32(stream_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's encoder, with its own dynamic table.
    fn client_block(encoder: &mut Encoder<'static>, fields: &[(&str, &str)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), frame_type, flags, stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Splits the rewritten byte stream into frames after the preface.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let length = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            let stream_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            frames.push((bytes[3], bytes[4], stream_id, bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        frames
    }

    /// Runs `stream` through a rewriter in chunks of `chunk` bytes.
    fn rewrite(stream: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
        let mut rewriter = Rewriter::new();
        let mut input = BytesMut::new();
        let mut output = BytesMut::new();
        for piece in stream.chunks(chunk) {
            input.extend_from_slice(piece);
            rewriter.process(&mut input, &mut output)?;
        }
        assert!(input.is_empty(), "left unparsed: {input:?}");
        Ok(output.to_vec())
    }

    /// Decodes the header blocks of rewritten frames as the server would,
    /// with one decoder for the whole connection.
    fn server_view(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (frame_type, flags, _, payload) in frames {
            match *frame_type {
                TYPE_HEADERS => {
                    let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    block.extend_from_slice(&payload[skip..]);
                }
                TYPE_CONTINUATION => block.extend_from_slice(payload),
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                let decoded = decoder.decode(&block).expect("server decodes our block");
                blocks.push(
                    decoded
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
                block.clear();
            }
        }
        blocks
    }

    fn request(authority: &str, extra: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", "/buildbarn.runner.Runner/Run".into()),
            (":authority", authority.into()),
            ("content-type", "application/grpc".into()),
            ("x-extra", extra.into()),
        ]
    }

    fn encode_request(encoder: &mut Encoder<'static>, authority: &str, extra: &str) -> Vec<u8> {
        let fields = request(authority, extra);
        let borrowed: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        client_block(encoder, &borrowed)
    }

    #[test]
    fn the_authority_of_every_request_becomes_localhost_and_tables_stay_in_sync() {
        // Why: C-core sends the socket path as authority, and its encoder
        // indexes it, so later requests refer to it through the client's
        // dynamic table; every one of them must still reach the server right.
        let mut client = Encoder::new();
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for stream_id in [1u32, 3, 5] {
            let block = encode_request(
                &mut client,
                "%2Fworker%2Frunner",
                &format!("value-{stream_id}"),
            );
            stream.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, &block));
            stream.extend(frame(0x0, FLAG_END_STREAM, stream_id, b"\0\0\0\0\0"));
        }
        for chunk in [1, 7, 4096] {
            let out = rewrite(&stream, chunk).unwrap();
            let frames = frames(&out);
            assert_eq!(
                frames.len(),
                7,
                "SETTINGS, then HEADERS and DATA three times"
            );
            assert_eq!(frames[0].0, 0x4);
            assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
            let blocks = server_view(&frames);
            for (index, block) in blocks.iter().enumerate() {
                let stream_id = [1, 3, 5][index];
                let expected: Vec<(String, String)> =
                    request("localhost", &format!("value-{stream_id}"))
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect();
                assert_eq!(block, &expected);
            }
        }
    }

    #[test]
    fn a_connection_whose_first_authority_is_accepted_is_passed_through_untouched() {
        // Why: grpc-go clients (bb_worker) send `localhost`; rewriting their
        // connections would only cost time on every call.
        let mut client = Encoder::new();
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[]));
        for (stream_id, authority) in [(1, "localhost"), (3, "localhost"), (5, "[::1]:1")] {
            let block = encode_request(&mut client, authority, "v");
            let (first, second) = block.split_at(10);
            stream.extend(frame(
                TYPE_HEADERS,
                FLAG_PADDED,
                stream_id,
                &[[2].as_slice(), first, &[0, 0]].concat(),
            ));
            stream.extend(frame(
                TYPE_CONTINUATION,
                FLAG_END_HEADERS,
                stream_id,
                second,
            ));
            stream.extend(frame(0x0, FLAG_END_STREAM, stream_id, b"\0\0\0\0\0"));
        }
        for chunk in [1, 13, 4096] {
            assert_eq!(rewrite(&stream, chunk).unwrap(), stream);
        }
    }

    #[test]
    fn continuation_frames_padding_and_priority_are_handled() {
        // Why: a client may split a block over CONTINUATION frames and pad
        // or prioritise its HEADERS; the server must see the same request.
        let mut client = Encoder::new();
        let block = encode_request(&mut client, "/worker/runner", &"x".repeat(3000));
        let (first, second) = block.split_at(100);
        let mut payload = vec![4u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 42]); // exclusive dependency, weight
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0; 4]);
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        stream.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, second));
        let frames = frames(&rewrite(&stream, 333).unwrap());
        assert_eq!(frames.len(), 1);
        let (frame_type, flags, stream_id, payload) = &frames[0];
        assert_eq!((*frame_type, *stream_id), (TYPE_HEADERS, 1));
        assert_eq!(*flags, FLAG_END_STREAM | FLAG_PRIORITY | FLAG_END_HEADERS);
        assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 42]);
        let blocks = server_view(&frames);
        assert_eq!(
            blocks[0][3],
            (":authority".to_string(), "localhost".to_string())
        );
        assert_eq!(blocks[0][5].1.len(), 3000);
    }

    #[test]
    fn a_block_longer_than_a_frame_is_split_into_continuations() {
        // Why: the server refuses frames above its maximum size, whatever
        // the re-encoded block's length.
        let block = PendingBlock {
            stream_id: 7,
            end_stream: true,
            priority: Some([0, 0, 0, 1, 16]),
            fragment: Vec::new(),
            continuations: 0,
            raw: Vec::new(),
        };
        let encoded: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut output = BytesMut::from(PREFACE);
        write_header_frames(&block, &encoded, &mut output);
        let frames = frames(&output);
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [
                (TYPE_HEADERS, FLAG_END_STREAM | FLAG_PRIORITY),
                (TYPE_CONTINUATION, 0),
                (TYPE_CONTINUATION, FLAG_END_HEADERS)
            ]
        );
        assert!(frames
            .iter()
            .all(|f| f.2 == 7 && f.3.len() <= MAX_FRAME_SIZE));
        let mut joined = frames[0].3[5..].to_vec();
        joined.extend(frames[1].3.iter().chain(&frames[2].3));
        assert_eq!(joined, encoded);
    }

    #[test]
    fn oversized_blocks_and_frames_close_the_connection() {
        // Why: what the wrapper buffers must stay bounded whatever a client
        // sends: long CONTINUATION chains, huge frames, HPACK bombs.
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        for _ in 0..5 {
            stream.extend(frame(TYPE_CONTINUATION, 0, 1, &[0x82; 4000]));
        }
        assert!(matches!(
            rewrite(&stream, 1000),
            Err(RewriteError::HeaderListTooLarge)
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        for _ in 0..100 {
            stream.extend(frame(TYPE_CONTINUATION, 0, 1, &[]));
        }
        assert!(matches!(
            rewrite(&stream, 1000),
            Err(RewriteError::TooManyContinuations)
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend_from_slice(&[0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0, 1]); // 65536-byte DATA
        assert!(matches!(
            rewrite(&stream, 100),
            Err(RewriteError::FrameTooLarge { .. })
        ));

        // One 4000-byte field in the dynamic table, then 5 references to it.
        let mut client = Encoder::new();
        let mut stream = PREFACE.to_vec();
        let first = client_block(
            &mut client,
            &[(":authority", "/socket"), ("x-big", &"z".repeat(4000))],
        );
        stream.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        stream.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x80 | 62; 5]));
        assert!(matches!(
            rewrite(&stream, 4096),
            Err(RewriteError::HeaderListTooLarge)
        ));
    }

    #[test]
    fn framing_the_rewriting_depends_on_is_enforced() {
        // Why: interleaving another frame inside a header block, or a stray
        // CONTINUATION, would desynchronise the HPACK state.
        let mut client = Encoder::new();
        let block = encode_request(&mut client, "a", "b");
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(TYPE_HEADERS, 0, 1, &block));
        stream.extend(frame(0x0, 0, 1, b"data"));
        assert!(matches!(
            rewrite(&stream, 64),
            Err(RewriteError::ExpectedContinuation { .. })
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block));
        assert!(matches!(
            rewrite(&stream, 64),
            Err(RewriteError::UnexpectedContinuation)
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend(frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &[0, 0, 0, 2]));
        assert!(matches!(
            rewrite(&stream, 64),
            Err(RewriteError::PushPromise)
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[200, 1, 2],
        ));
        assert!(matches!(
            rewrite(&stream, 64),
            Err(RewriteError::MalformedHeaders)
        ));

        let mut stream = PREFACE.to_vec();
        stream.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0x7f],
        ));
        assert!(matches!(rewrite(&stream, 64), Err(RewriteError::Hpack(_))));
    }

    #[tokio::test]
    async fn reads_through_the_wrapper_deliver_the_rewritten_stream() {
        // Why: the I/O wrapper must hand over the prefix it was given, then
        // rewritten frames, then end of stream.
        let mut client = Encoder::new();
        let block = encode_request(&mut client, "%2Fs", "v");
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[]));
        stream.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (prefix, rest) = stream.split_at(30);
        let (mut writer, reader) = tokio::io::duplex(64);
        let rest = rest.to_vec();
        let writing = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut writer, &rest)
                .await
                .unwrap();
        });
        let mut wrapped = AuthorityRewriting::new(reader, prefix);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut wrapped, &mut out)
            .await
            .unwrap();
        writing.await.unwrap();
        let blocks = server_view(&frames(&out));
        assert_eq!(blocks[0][3].1, "localhost");
    }
}

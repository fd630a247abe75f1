//! Decoding gRPC messages with bounds checked before anything is built.
//!
//! A `RunRequest` of 4 MiB (the default `maximumReceivedMessageSizeBytes`)
//! can hold 1.3 million one-byte arguments; decoding it builds 1.3 million
//! `String`s, some 50 times the size of the message, and a few such
//! requests in flight take gigabytes, only for `execve` to refuse them. A
//! check after decoding comes too late, so the generated service decodes
//! with [`BoundedCodec`] (`build.rs` names it as the codec): the encoded
//! `RunRequest` is walked first, counting what its arguments and
//! environment would take on the new program's stack
//! ([`crate::exec_limit`]) without allocating, and refused with
//! INVALID_ARGUMENT, stating the size and the limit, when they cannot be
//! executed. Only then does prost decode it.
//!
//! Whatever prost cannot decode (a broken encoding, a string that is not
//! UTF-8) is the request's fault too: INVALID_ARGUMENT, where tonic's own
//! codec answers INTERNAL. [`undecodable`] says so for every service,
//! also those whose codec is not ours ([`crate::checked_requests`]).

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::encoding::{decode_varint, WireType};
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::bounded::quoted;
use crate::exec_limit::{current_exec_limit, ExecLimitError, ExecSize};
use crate::fault::RunnerError;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use crate::server::status_from_error;

/// A message whose encoding may be checked before it is decoded.
pub trait Bounded: prost::Message + Default + Send + 'static {
    /// Refuses an encoded message that must not be decoded.
    fn check_encoded(_encoded: &[u8]) -> Result<(), RunnerError> {
        Ok(())
    }
}

impl Bounded for RunRequest {
    fn check_encoded(encoded: &[u8]) -> Result<(), RunnerError> {
        check_run_request(encoded, current_exec_limit())
    }
}

// Small, fixed-shape messages: nothing to bound beyond the message size.
impl Bounded for CheckReadinessRequest {}
impl Bounded for RunResponse {}
impl Bounded for () {}
impl Bounded for crate::proto::rbe_runner::events::v1::SubscribeRequest {}
impl Bounded for crate::proto::rbe_runner::events::v1::Event {}
impl Bounded for crate::proto::rbe_runner::output::v1::FollowRequest {}
impl Bounded for crate::proto::rbe_runner::output::v1::OutputChunk {}

/// prost's codec, with [`Bounded::check_encoded`] before each decode.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: Bounded,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            _message: PhantomData,
        }
    }
}

/// Checks, then decodes with prost.
#[derive(Debug)]
pub struct BoundedDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Bounded> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over one whole message in one contiguous buffer;
        // were it ever split, the copy would still be bounded by the
        // message size limit.
        let checked = if buf.chunk().len() == buf.remaining() {
            U::check_encoded(buf.chunk())
        } else {
            U::check_encoded(&buf.copy_to_bytes(buf.remaining()))
        };
        checked.map_err(status_from_error)?;
        U::decode(buf)
            .map(Some)
            .map_err(|error| status_from_error(undecodable(error)))
    }
}

/// A request prost cannot decode: the client's fault. prost's message
/// names the field (`RunRequest.stdout_path: invalid string value: data
/// is not UTF-8 encoded`).
pub fn undecodable(error: prost::DecodeError) -> RunnerError {
    RunnerError::InvalidArgument(format!(
        "the request is not a valid protobuf encoding: {error}"
    ))
}

// ---------------------------------------------------------------------------
// Walking an encoded RunRequest
// ---------------------------------------------------------------------------

/// `RunRequest.arguments`: `repeated string`.
const ARGUMENTS_FIELD: u64 = 1;
/// `RunRequest.environment_variables`: `map<string, string>`, encoded as
/// repeated entries with the key as field 1 and the value as field 2.
const ENVIRONMENT_VARIABLES_FIELD: u64 = 2;
const MAP_KEY_FIELD: u64 = 1;
const MAP_VALUE_FIELD: u64 = 2;

/// How deeply groups may nest (prost's recursion limit).
const MAXIMUM_GROUP_DEPTH: u32 = 100;

/// Refuses an encoded `RunRequest` whose arguments and environment could
/// not be passed to `execve` under `limit`, or that is not a valid
/// encoding (prost would refuse it too, after allocating).
fn check_run_request(encoded: &[u8], limit: u64) -> Result<(), RunnerError> {
    let size = measure_run_request(encoded).map_err(|error| match error {
        WalkError::Limit(error) => limit_error(error),
        WalkError::Malformed { offset } => RunnerError::InvalidArgument(format!(
            "the RunRequest is not a valid protobuf encoding (at byte {offset})"
        )),
        WalkError::NotUtf8 { what } => {
            RunnerError::InvalidArgument(format!("{what} is not valid UTF-8"))
        }
    })?;
    size.check(limit).map_err(limit_error)
}

fn limit_error(error: ExecLimitError) -> RunnerError {
    RunnerError::InvalidArgument(format!("the request cannot be executed: {error}"))
}

/// Why a walk stopped.
#[derive(Debug, PartialEq, Eq)]
enum WalkError {
    /// A string is longer than exec allows.
    Limit(ExecLimitError),
    /// The encoding is broken at this byte.
    Malformed { offset: usize },
    /// A string is not UTF-8, which prost would refuse naming only the
    /// field; this names which one (`arguments[3]`).
    NotUtf8 { what: String },
}

/// What the arguments and environment of an encoded `RunRequest` take on
/// a new program's stack. Allocates nothing per valid string.
fn measure_run_request(encoded: &[u8]) -> Result<ExecSize, WalkError> {
    let mut size = ExecSize::default();
    let mut arguments = 0;
    let mut fields = Fields::new(encoded);
    while let Some(field) = fields.next_field()? {
        match field {
            Field::Bytes(ARGUMENTS_FIELD, argument) => {
                require_utf8(argument, || format!("arguments[{arguments}]"))?;
                size.add_argument(arguments, argument.len())
                    .map_err(WalkError::Limit)?;
                arguments += 1;
            }
            Field::Bytes(ENVIRONMENT_VARIABLES_FIELD, entry) => {
                let (key, value) = map_entry(entry)?;
                let lossy_key = || String::from_utf8_lossy(key).into_owned();
                require_utf8(key, || {
                    format!("environment_variables key {}", quoted(&lossy_key()))
                })?;
                require_utf8(value, || {
                    format!(
                        "the value of environment_variables key {}",
                        quoted(&lossy_key())
                    )
                })?;
                size.add_environment_variable(lossy_key, key.len(), value.len())
                    .map_err(WalkError::Limit)?;
            }
            _ => {}
        }
    }
    Ok(size)
}

/// Refuses a string field that is not UTF-8; `what` names it.
fn require_utf8(bytes: &[u8], what: impl FnOnce() -> String) -> Result<(), WalkError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(_) => Err(WalkError::NotUtf8 { what: what() }),
    }
}

/// The key and value of an encoded map entry (absent ones are empty; a
/// repeated one counts as its last occurrence, as in decoding).
fn map_entry(entry: &[u8]) -> Result<(&[u8], &[u8]), WalkError> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut fields = Fields::new(entry);
    while let Some(field) = fields.next_field()? {
        match field {
            Field::Bytes(MAP_KEY_FIELD, bytes) => key = bytes,
            Field::Bytes(MAP_VALUE_FIELD, bytes) => value = bytes,
            _ => {}
        }
    }
    Ok((key, value))
}

/// One top-level field of an encoding.
enum Field<'a> {
    /// A length-delimited field: its number and contents.
    Bytes(u64, &'a [u8]),
    /// Any other field (skipped).
    Other,
}

/// The top-level fields of an encoding, in order.
struct Fields<'a> {
    encoded: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(encoded: &'a [u8]) -> Self {
        Fields {
            encoded,
            rest: encoded,
        }
    }

    fn malformed(&self) -> WalkError {
        WalkError::Malformed {
            offset: self.encoded.len() - self.rest.len(),
        }
    }

    fn next_field(&mut self) -> Result<Option<Field<'a>>, WalkError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (number, wire_type) = self.key()?;
        match wire_type {
            WireType::LengthDelimited => Ok(Some(Field::Bytes(number, self.length_delimited()?))),
            WireType::StartGroup => {
                self.skip_group(number, 1)?;
                Ok(Some(Field::Other))
            }
            other => {
                self.skip_scalar(other)?;
                Ok(Some(Field::Other))
            }
        }
    }

    /// A field's key: its number (never 0) and wire type.
    fn key(&mut self) -> Result<(u64, WireType), WalkError> {
        let key = self.varint()?;
        let number = key >> 3;
        let wire_type = WireType::try_from(key & 7).map_err(|_| self.malformed())?;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(self.malformed());
        }
        Ok((number, wire_type))
    }

    fn varint(&mut self) -> Result<u64, WalkError> {
        let before = self.rest;
        decode_varint(&mut self.rest).map_err(|_| {
            self.rest = before;
            self.malformed()
        })
    }

    fn take(&mut self, length: u64) -> Result<&'a [u8], WalkError> {
        let length = usize::try_from(length).map_err(|_| self.malformed())?;
        if length > self.rest.len() {
            return Err(self.malformed());
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], WalkError> {
        let length = self.varint()?;
        self.take(length)
    }

    fn skip_scalar(&mut self, wire_type: WireType) -> Result<(), WalkError> {
        match wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::SixtyFourBit => self.take(8).map(drop),
            WireType::ThirtyTwoBit => self.take(4).map(drop),
            WireType::LengthDelimited => self.length_delimited().map(drop),
            // A group end without its start.
            WireType::StartGroup | WireType::EndGroup => Err(self.malformed()),
        }
    }

    /// Skips a group up to its end marker, which must carry `number`.
    fn skip_group(&mut self, number: u64, depth: u32) -> Result<(), WalkError> {
        if depth > MAXIMUM_GROUP_DEPTH {
            return Err(self.malformed());
        }
        loop {
            if self.rest.is_empty() {
                return Err(self.malformed());
            }
            match self.key()? {
                (end, WireType::EndGroup) if end == number => return Ok(()),
                (_, WireType::EndGroup) => return Err(self.malformed()),
                (inner, WireType::StartGroup) => self.skip_group(inner, depth + 1)?,
                (_, other) => self.skip_scalar(other)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn request(arguments: &[&str], environment: &[(&str, &str)]) -> RunRequest {
        RunRequest {
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            environment_variables: environment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            working_directory: "work".into(),
            stdout_path: "action/stdout".into(),
            ..RunRequest::default()
        }
    }

    fn size_of_decoded(request: &RunRequest) -> ExecSize {
        ExecSize::of(&request.arguments, &request.environment_variables).unwrap()
    }

    #[test]
    fn the_walk_counts_what_decoding_would_build() {
        let request = request(&["sh", "-c", "echo hi"], &[("PATH", "/bin"), ("A", "")]);
        let encoded = request.encode_to_vec();
        assert_eq!(
            measure_run_request(&encoded).unwrap(),
            size_of_decoded(&request)
        );
    }

    /// Why it matters: this is the request that made the runner's RSS
    /// grow 25-fold; it must be refused from its encoding alone.
    #[test]
    fn a_million_tiny_arguments_are_refused_stating_size_and_limit() {
        let mut encoded = Vec::new();
        for _ in 0..1_300_000 {
            encoded.extend_from_slice(&[0x0a, 1, b'a']);
        }
        let error = check_run_request(&encoded, 2 * 1024 * 1024).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let message = error.to_string();
        assert!(message.contains("13000016 bytes"), "{message}");
        assert!(message.contains("2097152"), "{message}");
    }

    #[test]
    fn one_string_longer_than_max_arg_strlen_is_refused_naming_it() {
        let long = "x".repeat(131_072);
        let encoded = request(&["true", &long], &[]).encode_to_vec();
        let message = check_run_request(&encoded, 6 << 20)
            .unwrap_err()
            .to_string();
        assert!(message.contains("arguments[1]"), "{message}");
        let encoded = request(&["true"], &[("BIG", &long)]).encode_to_vec();
        let message = check_run_request(&encoded, 6 << 20)
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"BIG\""), "{message}");
        let fits = "x".repeat(131_071);
        let encoded = request(&["true", &fits], &[]).encode_to_vec();
        check_run_request(&encoded, 6 << 20).unwrap();
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped() {
        let mut encoded = request(&["true"], &[("K", "V")]).encode_to_vec();
        // Field 15 varint, field 16 fixed64, field 17 fixed32, field 18 a
        // group holding an "argument-looking" field 1, then one argument.
        encoded.extend_from_slice(&[0x78, 0x96, 0x01]);
        encoded.extend_from_slice(&[0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        encoded.extend_from_slice(&[0x8d, 0x01, 1, 2, 3, 4]);
        encoded.extend_from_slice(&[0x93, 0x01, 0x0a, 1, b'g', 0x94, 0x01]);
        encoded.extend_from_slice(&[0x0a, 2, b'h', b'i']);
        let decoded = RunRequest::decode(encoded.as_slice()).unwrap();
        assert_eq!(decoded.arguments, ["true", "hi"]);
        assert_eq!(
            measure_run_request(&encoded).unwrap(),
            size_of_decoded(&decoded)
        );
    }

    #[test]
    fn broken_encodings_are_invalid_arguments() {
        for broken in [
            &[0x0a, 5, b'a'][..],             // truncated string
            &[0x0a][..],                      // key without length
            &[0x0f][..],                      // wire type 7
            &[0x93, 0x01, 0x0a, 1, b'g'][..], // group never ends
            &[0x94, 0x01][..],                // group end without start
            &[0x02, 0][..],                   // field number 0
        ] {
            let error = check_run_request(broken, 6 << 20).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{broken:?}");
            assert!(RunRequest::decode(broken).is_err(), "{broken:?}");
        }
    }

    /// Why it matters: tonic's codec answered INTERNAL, which Bazel
    /// retries elsewhere in vain; the message says which string it is.
    #[test]
    fn strings_that_are_not_utf8_are_invalid_arguments_naming_them() {
        let mut argument = request(&["true", "ok"], &[]).encode_to_vec();
        argument.extend_from_slice(&[0x0a, 2, b'a', 0xff]);
        // An environment entry: key field 1, value field 2.
        let entry = |key: &[u8], value: &[u8]| {
            let mut entry = vec![0x0a, key.len() as u8];
            entry.extend_from_slice(key);
            entry.extend_from_slice(&[0x12, value.len() as u8]);
            entry.extend_from_slice(value);
            let mut field = vec![0x12, entry.len() as u8];
            field.extend_from_slice(&entry);
            field
        };
        let cases = [
            (argument, "arguments[2] is not valid UTF-8"),
            (
                entry(b"K\xffY", b"v"),
                "environment_variables key \"K\u{fffd}Y\" is not valid UTF-8",
            ),
            (
                entry(b"KEY", b"\xc3"),
                "the value of environment_variables key \"KEY\" is not valid UTF-8",
            ),
        ];
        for (encoded, expected) in cases {
            let error = check_run_request(&encoded, 6 << 20).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert_eq!(error.to_string(), expected);
            assert!(
                RunRequest::decode(encoded.as_slice()).is_err(),
                "{expected}"
            );
        }
    }

    /// The walk does not look at the paths; decoding refuses them,
    /// naming the field, with the same code.
    #[test]
    fn other_undecodable_strings_are_invalid_arguments_naming_the_field() {
        let mut encoded = request(&["true"], &[]).encode_to_vec();
        // stdout_path (field 4) again, not UTF-8: the last one wins.
        encoded.extend_from_slice(&[0x22, 1, 0xff]);
        check_run_request(&encoded, 6 << 20).unwrap();
        let error = undecodable(RunRequest::decode(encoded.as_slice()).unwrap_err());
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let message = error.to_string();
        assert!(message.contains("RunRequest.stdout_path"), "{message}");
        assert!(message.contains("not UTF-8"), "{message}");
    }

    proptest! {
        /// The walk agrees with decoding on every request.
        #[test]
        fn the_walk_agrees_with_decoding(
            arguments in proptest::collection::vec(".{0,20}", 0..20),
            environment in proptest::collection::btree_map(".{0,10}", ".{0,20}", 0..10),
        ) {
            let request = RunRequest {
                arguments,
                environment_variables: environment.into_iter().collect(),
                ..RunRequest::default()
            };
            let encoded = request.encode_to_vec();
            prop_assert_eq!(measure_run_request(&encoded).unwrap(), size_of_decoded(&request));
        }
    }
}

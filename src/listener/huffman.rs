//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoded with a table
//! computed at compile time, and header blocks rewritten without it.
//!
//! The HPACK decoder the authority rewriting uses (`loona_hpack`) builds
//! a hash map of all 257 codes for every Huffman-coded string it decodes:
//! C-core and Java clients Huffman-code most literals, so each request
//! paid for a dozen such tables. [`plain_strings`] writes every
//! Huffman-coded string of a block out as plain octets first, with the
//! table below, so the decoder never builds one; nothing else about the
//! block changes (representations, indices, dynamic table updates).
//!
//! The code is canonical (codes of one length are consecutive, assigned
//! shortest first, in symbol order), so the lengths alone define it.

/// The length in bits of each symbol's code, symbols 0–255 and EOS (256).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const LONGEST: usize = 30;

/// The canonical code's decoding table: for each length, the first code
/// and how many codes have it, and the symbols in code order.
struct Table {
    first_code: [u32; LONGEST + 1],
    count: [u32; LONGEST + 1],
    /// Index in `symbols` of each length's first code.
    offset: [u16; LONGEST + 1],
    symbols: [u16; 257],
}

const TABLE: Table = Table::build();

impl Table {
    const fn build() -> Table {
        let mut count = [0u32; LONGEST + 1];
        let mut symbol = 0;
        while symbol < 257 {
            count[CODE_LENGTHS[symbol] as usize] += 1;
            symbol += 1;
        }
        let mut first_code = [0u32; LONGEST + 1];
        let mut offset = [0u16; LONGEST + 1];
        let mut code = 0u32;
        let mut index = 0u16;
        let mut length = 1;
        while length <= LONGEST {
            first_code[length] = code;
            offset[length] = index;
            index += count[length] as u16;
            code = (code + count[length]) << 1;
            length += 1;
        }
        // Symbols in code order: by length, then by symbol.
        let mut symbols = [0u16; 257];
        let mut next = offset;
        let mut symbol = 0;
        while symbol < 257 {
            let length = CODE_LENGTHS[symbol] as usize;
            symbols[next[length] as usize] = symbol as u16;
            next[length] += 1;
            symbol += 1;
        }
        Table {
            first_code,
            count,
            offset,
            symbols,
        }
    }
}

/// Why a Huffman-coded string is refused (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("the EOS symbol inside a Huffman-coded string")]
    EosInString,
    #[error("Huffman padding longer than 7 bits")]
    PaddingTooLong,
    #[error("Huffman padding that is not a prefix of EOS")]
    InvalidPadding,
}

/// Appends the octets `encoded` codes to `out`.
pub fn decode(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let mut code = 0u32;
    let mut length = 0usize;
    for &byte in encoded {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            length += 1;
            // Below the first code of this length, `code` would have ended
            // at a shorter length; at or past the last, it goes on.
            let index = code.wrapping_sub(TABLE.first_code[length]);
            if index < TABLE.count[length] {
                let symbol = TABLE.symbols[usize::from(TABLE.offset[length]) + index as usize];
                if symbol == EOS {
                    return Err(HuffmanError::EosInString);
                }
                out.push(symbol as u8);
                code = 0;
                length = 0;
            } else if length == LONGEST {
                // The code is complete: every 30-bit string ends a code.
                return Err(HuffmanError::EosInString);
            }
        }
    }
    if length > 7 {
        return Err(HuffmanError::PaddingTooLong);
    }
    // EOS is thirty ones: padding is its first bits.
    if code != (1u32 << length) - 1 {
        return Err(HuffmanError::InvalidPadding);
    }
    Ok(())
}

/// A header block that is not well formed; the decoder is left to say how.
#[derive(Debug)]
pub struct Malformed;

/// Writes `block` to `out` with every Huffman-coded string replaced by
/// its plain octets. Says whether there was any.
pub fn plain_strings(block: &[u8], out: &mut Vec<u8>) -> Result<bool, Malformed> {
    let mut rest = block;
    let mut any = false;
    while let Some(&first) = rest.first() {
        let (prefix_bits, strings) = if first & 0x80 != 0 {
            (7, 0) // indexed field
        } else if first & 0xC0 == 0x40 {
            (6, 1) // literal with incremental indexing
        } else if first & 0xE0 == 0x20 {
            (5, 0) // dynamic table size update
        } else {
            (4, 1) // literal without indexing, or never indexed
        };
        let (index, used) = integer(rest, prefix_bits)?;
        out.extend_from_slice(&rest[..used]);
        rest = &rest[used..];
        // A literal whose name is not indexed carries it as a string.
        let strings = if strings == 1 && index == 0 {
            2
        } else {
            strings
        };
        for _ in 0..strings {
            rest = string(rest, out, &mut any)?;
        }
    }
    Ok(any)
}

/// Copies the string at the start of `input` to `out`, plain; returns
/// what follows it.
fn string<'a>(input: &'a [u8], out: &mut Vec<u8>, any: &mut bool) -> Result<&'a [u8], Malformed> {
    let huffman = input.first().ok_or(Malformed)? & 0x80 != 0;
    let (length, used) = integer(input, 7)?;
    let end = used
        .checked_add(length)
        .filter(|end| *end <= input.len())
        .ok_or(Malformed)?;
    let octets = &input[used..end];
    if huffman {
        *any = true;
        let mut plain = Vec::with_capacity(octets.len() * 8 / 5 + 1);
        decode(octets, &mut plain).map_err(|_| Malformed)?;
        put_integer(out, 0, 7, plain.len());
        out.extend_from_slice(&plain);
    } else {
        out.extend_from_slice(&input[..end]);
    }
    Ok(&input[end..])
}

/// An integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1) at the
/// start of `input`, and the octets it takes.
fn integer(input: &[u8], prefix_bits: u32) -> Result<(usize, usize), Malformed> {
    let mask = (1usize << prefix_bits) - 1;
    let mut value = usize::from(*input.first().ok_or(Malformed)?) & mask;
    if value < mask {
        return Ok((value, 1));
    }
    let mut shift = 0;
    for (position, &byte) in input.iter().enumerate().skip(1) {
        // Nothing in a block of 16 KiB needs more than four octets.
        if shift > 21 {
            return Err(Malformed);
        }
        value += usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((value, position + 1));
        }
    }
    Err(Malformed)
}

/// Appends `value` with a `prefix_bits`-bit prefix whose high bits are
/// `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, mut value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7F) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes with the canonical code, for the tests.
    fn encode(plain: &[u8]) -> Vec<u8> {
        let mut codes = [0u32; 257];
        for (position, &symbol) in TABLE.symbols.iter().enumerate() {
            let length = CODE_LENGTHS[usize::from(symbol)] as usize;
            let index = position - usize::from(TABLE.offset[length]);
            codes[usize::from(symbol)] = TABLE.first_code[length] + index as u32;
        }
        let mut out = Vec::new();
        let (mut bits, mut pending) = (0u64, 0u32);
        for &byte in plain {
            let length = u32::from(CODE_LENGTHS[usize::from(byte)]);
            bits = (bits << length) | u64::from(codes[usize::from(byte)]);
            pending += length;
            while pending >= 8 {
                pending -= 8;
                out.push((bits >> pending) as u8);
            }
        }
        if pending > 0 {
            out.push(((bits << (8 - pending)) as u8) | ((1u8 << (8 - pending)) - 1));
        }
        out
    }

    /// Why it matters: the table is derived from code lengths alone; the
    /// RFC's own example (§C.4.1) proves the derived codes are the RFC's.
    #[test]
    fn the_rfc_example_decodes() {
        let encoded = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&encoded, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(encode(b"www.example.com"), encoded);
    }

    /// Why it matters: a client's malformed string must be refused as the
    /// RFC says, not decoded into something else.
    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // 'a' is 00011 (5 bits); then 3 zero bits of padding.
        assert_eq!(
            decode(&[0b0001_1000], &mut out),
            Err(HuffmanError::InvalidPadding)
        );
        // A whole octet of padding after a complete code.
        assert_eq!(
            decode(&[0b0001_1111, 0xff], &mut out),
            Err(HuffmanError::PaddingTooLong)
        );
        // EOS itself: thirty ones.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::EosInString)
        );
    }

    proptest! {
        /// Why it matters: the decoder the rewriting used before (and still
        /// uses for everything else) is the reference.
        #[test]
        fn decoding_agrees_with_loona_hpack(plain in proptest::collection::vec(any::<u8>(), 0..200)) {
            let encoded = encode(&plain);
            let mut ours = Vec::new();
            decode(&encoded, &mut ours).unwrap();
            let theirs = loona_hpack::huffman::HuffmanDecoder::new().decode(&encoded).unwrap();
            prop_assert_eq!(&ours, &plain);
            prop_assert_eq!(ours, theirs);
        }

        /// Why it matters: the block handed to the decoder must mean the
        /// same headers, with the same dynamic table, as the client's.
        #[test]
        fn blocks_with_plain_strings_decode_to_the_same_headers(
            fields in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..300), 0u8..4),
                0..12,
            )
        ) {
            // Names and values Huffman-coded or not, literals of each kind,
            // some referring to a static table name, and indexed fields.
            let mut block = Vec::new();
            for (position, (name, value, kind)) in fields.iter().enumerate() {
                let huffman = position % 2 == 0;
                let put = |block: &mut Vec<u8>, octets: &[u8]| {
                    if huffman {
                        let encoded = encode(octets);
                        put_integer(block, 0x80, 7, encoded.len());
                        block.extend_from_slice(&encoded);
                    } else {
                        put_integer(block, 0, 7, octets.len());
                        block.extend_from_slice(octets);
                    }
                };
                match kind {
                    0 => put_integer(&mut block, 0x80, 7, 2 + position % 60), // indexed
                    1 => {
                        put_integer(&mut block, 0x40, 6, 0);
                        put(&mut block, name);
                        put(&mut block, value);
                    }
                    2 => {
                        put_integer(&mut block, 0x40, 6, 1 + position % 60);
                        put(&mut block, value);
                    }
                    _ => {
                        put_integer(&mut block, 0x10, 4, 0);
                        put(&mut block, name);
                        put(&mut block, value);
                    }
                }
            }
            let decode_all = |block: &[u8]| {
                let mut decoder = loona_hpack::Decoder::new();
                let mut headers = Vec::new();
                decoder.decode_with_cb(block, |name, value| headers.push((name.into_owned(), value.into_owned()))).unwrap();
                headers
            };
            let mut plain = Vec::new();
            let any = plain_strings(&block, &mut plain).unwrap();
            prop_assert_eq!(decode_all(&plain), decode_all(&block));
            prop_assert_eq!(any, plain != block);
        }
    }
}

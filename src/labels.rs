//! Label values made from bytes the kernel hands over (process names,
//! cgroup paths), rendered so that two different byte strings never share a
//! label value: a series is identified by its rendered values, and a
//! Prometheus server silently drops one of two identical series.

/// The label value of the series that absorbs label sets past the series
/// limit. A name that is exactly this renders as `\overflow`.
pub const OVERFLOW: &str = "overflow";

/// Renders bytes losslessly and injectively: valid UTF-8 stays as it is,
/// except that a byte outside valid UTF-8 and an ASCII control character
/// become `\xHH`, a backslash becomes `\\`, and the reserved value
/// `overflow` becomes `\overflow`. Every escape starts with a backslash and
/// a literal backslash is itself escaped, so no two inputs render alike.
pub fn render_bytes(bytes: &[u8]) -> String {
    if bytes == OVERFLOW.as_bytes() {
        return format!("\\{OVERFLOW}");
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => push_hex(&mut out, c as u8),
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\x");
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// A task's `comm` bytes up to the first NUL.
pub fn comm_bytes(comm: &[u8; 16]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

/// `comm` as a hashable key: the bytes up to the first NUL, zero after it.
/// The kernel may leave bytes of an earlier, longer name behind the NUL,
/// and two keys for one name would make two series of one label value.
///
/// One 16-byte load and a mask, rather than a byte loop: a key built byte
/// by byte on the stack and then read as a whole stalls the hot path.
#[inline]
pub fn comm_key(comm: &[u8; 16]) -> u128 {
    let v = u128::from_le_bytes(*comm);
    const ONES: u128 = u128::MAX / 255; // 0x0101...01
    const HIGHS: u128 = ONES << 7; // 0x8080...80
                                   // The lowest set bit marks the first zero byte (bits above it may be
                                   // wrong, and do not matter).
    let zeros = v.wrapping_sub(ONES) & !v & HIGHS;
    if zeros == 0 {
        return v;
    }
    let first_zero_byte = zeros.trailing_zeros() / 8;
    v & ((1u128 << (first_zero_byte * 8)) - 1)
}

/// The comm label value of a key made by `comm_key`.
pub fn render_comm_key(key: u128) -> String {
    render_bytes(comm_bytes(&key.to_le_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_losslessly_and_distinctly() {
        assert_eq!(render_bytes(b"nginx"), "nginx");
        assert_eq!(render_bytes("größe".as_bytes()), "größe");
        assert_eq!(render_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(render_bytes(b"a\xfeb"), "a\\xfeb");
        assert_eq!(render_bytes(b"tab\there\n"), "tab\\x09here\\x0a");
        assert_eq!(render_bytes(b"back\\slash"), "back\\\\slash");
        // the text `\xff` and the byte 0xff differ
        assert_ne!(render_bytes(b"\\xff"), render_bytes(b"\xff"));
        assert_eq!(render_bytes(b"overflow"), "\\overflow");
        assert_eq!(render_bytes(b"overflow2"), "overflow2");
        assert_eq!(render_bytes(b""), "");
    }

    #[test]
    fn rendering_is_injective_over_tricky_inputs() {
        let inputs: Vec<&[u8]> = vec![
            b"\\",
            b"\\\\",
            b"\\x5c",
            b"\\overflow",
            b"overflow",
            b"\xc3",
            b"\xc3\xa9",
            b"\xe9",
            b"\x7f",
            b"\\x7f",
            b"",
            b"\0",
        ];
        let mut seen = std::collections::HashMap::new();
        for input in inputs {
            if let Some(other) = seen.insert(render_bytes(input), input) {
                panic!("{input:?} and {other:?} render alike");
            }
        }
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        comm[6] = b'x';
        assert_eq!(comm_bytes(&comm), b"bash");
        assert_eq!(comm_key(&comm), u128::from_le_bytes(*b"bash\0\0\0\0\0\0\0\0\0\0\0\0"), "bytes after the NUL");
        assert_eq!(render_comm_key(comm_key(&comm)), "bash");
        let full = [b'x'; 16];
        assert_eq!(comm_key(&full), u128::from_le_bytes(full));
        assert_eq!(comm_key(&[0; 16]), 0);
        // bytes of 0x01 and 0x81 next to a NUL are where the zero-byte
        // trick can misfire; the key must still end at the first NUL
        let mut tricky = [0u8; 16];
        tricky[0] = 1;
        tricky[2] = 1;
        tricky[3] = 0x81;
        assert_eq!(comm_key(&tricky), 1);
    }
}

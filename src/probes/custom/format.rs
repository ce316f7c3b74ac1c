//! A tracepoint's record layout from its tracefs `format` file, the
//! kernel's own description of the record a tracepoint program is handed:
//!
//! ```text
//!     field:int sig;    offset:8;    size:4;    signed:1;
//!     field:__data_loc char[] filename;    offset:8;    size:4;    signed:0;
//! ```

use crate::spec::custom::{Field, FieldKind};

/// The fields of a tracepoint's record that a config-defined probe can
/// read: numbers of 1, 2, 4 or 8 bytes and strings. The common fields every
/// record starts with (`common_pid`…) are left out: the record header
/// carries what they say. `syscall_args`: the tracepoint is a system call's,
/// whose pointers point into the calling process.
pub fn parse(text: &str, syscall_args: bool) -> Vec<Field> {
    text.lines().filter_map(|line| field(line, syscall_args)).collect()
}

fn field(line: &str, syscall_args: bool) -> Option<Field> {
    let mut parts = line.trim().split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse::<u16>().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse::<u16>().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    let (c_type, name) = decl.rsplit_once(|c: char| c.is_whitespace() || c == '*')?;
    let (name, array) = match name.split_once('[') {
        Some((name, _)) => (name, true),
        None => (name, false),
    };
    if name.is_empty() || name.starts_with("common_") {
        return None;
    }
    let pointer = decl[..decl.len() - name.len()].trim_end().ends_with('*') && !array;
    let c_type = if array { decl.trim() } else { c_type.trim() };
    let kind = kind(c_type, array, pointer, signed, size?, syscall_args)?;
    Some(Field { name: name.to_string(), c_type: c_type.to_string(), kind, offset: offset?, size: size? })
}

fn kind(c_type: &str, array: bool, pointer: bool, signed: bool, size: u16, syscall_args: bool) -> Option<FieldKind> {
    let chars = is_char(c_type);
    if c_type.starts_with("__data_loc") {
        return chars.then_some(FieldKind::DataLocString);
    }
    if array {
        return chars.then_some(FieldKind::InlineString);
    }
    if pointer && chars {
        return Some(if syscall_args { FieldKind::UserString } else { FieldKind::KernelString });
    }
    matches!(size, 1 | 2 | 4 | 8).then_some(FieldKind::Number { signed: signed || signed_type(c_type) })
}

/// Whether the declaration's base type is `char` (any qualifier).
fn is_char(c_type: &str) -> bool {
    c_type.split(|c: char| c.is_whitespace() || c == '*' || c == '[').any(|word| matches!(word, "char" | "char[]"))
}

/// System call tracepoints declare every argument as `unsigned long` room
/// (signed:0) under its own C type: `int dfd` holds AT_FDCWD as -100.
fn signed_type(c_type: &str) -> bool {
    let words: Vec<&str> = c_type.split_whitespace().collect();
    !words.contains(&"unsigned")
        && words.iter().any(|w| {
            matches!(*w, "int" | "long" | "short" | "pid_t" | "s8" | "s16" | "s32" | "s64" | "ssize_t" | "loff_t")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNAL_GENERATE: &str = "name: signal_generate
ID: 261
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;

print fmt: \"sig=%d comm=%s\", REC->sig, REC->comm
";

    #[test]
    fn reads_numbers_and_inline_strings_without_common_fields() {
        let fields = parse(SIGNAL_GENERATE, false);
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["sig", "comm", "pid"]);
        assert_eq!(fields[0].kind, FieldKind::Number { signed: true });
        assert_eq!((fields[0].offset, fields[0].size), (8, 4));
        assert_eq!(fields[1].kind, FieldKind::InlineString);
        assert_eq!((fields[1].offset, fields[1].size, fields[1].c_type.as_str()), (20, 16, "char comm[16]"));
    }

    #[test]
    fn reads_syscall_pointers_and_data_loc_strings() {
        let openat = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;";
        let fields = parse(openat, true);
        assert_eq!(fields[1].kind, FieldKind::Number { signed: true }, "int dfd holds -100");
        assert_eq!(fields[2].name, "filename");
        assert_eq!(
            (fields[2].kind, fields[2].offset, fields[2].c_type.as_str()),
            (FieldKind::UserString, 24, "const char *")
        );
        assert_eq!(fields[3].kind, FieldKind::Number { signed: false });
        let exec = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u8 mac[6];\toffset:12;\tsize:6;\tsigned:0;
\tfield:struct foo * ptr;\toffset:24;\tsize:8;\tsigned:0;";
        let fields = parse(exec, false);
        assert_eq!(fields.len(), 2, "a byte array is not a string: {fields:?}");
        assert_eq!(fields[0].kind, FieldKind::DataLocString);
        assert_eq!((fields[1].name.as_str(), fields[1].kind), ("ptr", FieldKind::Number { signed: false }));
    }
}

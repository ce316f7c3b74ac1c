//! A linear pre-scan of the config text, run before the YAML parser sees it.
//!
//! The parser's time grows with the square of flow nesting (100,000 `[`
//! cost it 38 s), and it reports a second document without a location. This
//! scan follows the YAML tokenizer's rules just far enough to count open
//! mappings and lists — flow (`[`, `{`) and block (indentation, `- `, `? `,
//! keys) alike, quoted scalars, plain scalars and comments skipped as the
//! parser skips them — and to see document markers. Hostile input is refused
//! in time linear in its size, at the line and column where a limit is
//! crossed.

/// The deepest nesting of mappings and lists a config may have. sonde's
/// deepest config has 5 levels (the top-level mapping → `probes` → a
/// probe's settings → `filter` → `comm` list); the limit leaves room for any
/// style of writing it while keeping the parser far from its quadratic worst
/// case.
pub const MAX_CONFIG_DEPTH: usize = 32;

/// Why the text was refused, and the byte offset the message is about.
#[derive(Debug)]
pub struct Fault {
    pub offset: usize,
    pub message: String,
}

/// Refuses nesting deeper than [`MAX_CONFIG_DEPTH`] and more than one YAML
/// document.
pub fn check(text: &str) -> Result<(), Fault> {
    scan(text, MAX_CONFIG_DEPTH).map(|_| ())
}

/// How a scan that found nothing to refuse ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// At the end of the text.
    End,
    /// At a syntax error, which the parser reports.
    SyntaxError,
}

fn scan(text: &str, max_depth: usize) -> Result<Ending, Fault> {
    Scanner::new(text.as_bytes(), max_depth).run()
}

/// The 1-based line and column (in characters) of byte `offset`, counted as
/// the YAML parser counts them, so that these faults and the parser's own
/// errors agree.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let (mut line, mut line_start, mut i) = (1, 0, 0);
    while i < offset {
        match break_len(bytes, i) {
            0 => i += 1,
            n => {
                i += n;
                line += 1;
                line_start = i;
            }
        }
    }
    let column = text.get(line_start..offset).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Length of the line break at `i`, 0 if there is none. The YAML parser
/// also ends lines at a lone CR, NEL, LS and PS: a comment ends there, and
/// what follows is parsed, so the scan must agree.
fn break_len(text: &[u8], i: usize) -> usize {
    match text.get(i..).unwrap_or_default() {
        [b'\r', b'\n', ..] | [0xC2, 0x85, ..] => 2,
        [b'\r' | b'\n', ..] => 1,
        [0xE2, 0x80, 0xA8 | 0xA9, ..] => 3,
        _ => 0,
    }
}

const SECOND_DOCUMENT: &str = "a second YAML document starts here: a config file holds one document";
const EMPTY_KEY: &str = "`?` with no key right before `]`: the YAML parser reads the list as still open; \
                         write the key, or leave out the `?`";
const AFTER_END: &str = "content after the end of the YAML document (`...`): a config file holds one document";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Seq,
}

/// An open block mapping or sequence and the column its entries start at.
struct Level {
    col: usize,
    kind: Kind,
}

/// An open flow collection.
struct FlowLevel {
    kind: Kind,
    /// In a flow sequence, the current entry is a `key: value` pair, which
    /// the parser reads as a one-entry mapping: one level more.
    pair: bool,
    /// The deepest level reached within the current entry, and within the
    /// entries before it: a pair's key is found deeper once its `:` comes.
    entry_max: usize,
    max: usize,
}

/// Where a node starts: its column decides which block mapping a key there
/// belongs to, its offset is where a fault about it is reported.
#[derive(Clone, Copy)]
struct At {
    col: usize,
    offset: usize,
}

/// What may start at a node. Where the parser is sure to fail on what
/// comes, the scan stops and leaves the error to it: counting on would only
/// report a syntax error as something else.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allows {
    /// A block collection or a key: at a line's start, after `- `, `? `, `: `.
    Collection,
    /// A key, but no block collection: after a property (`&a key: value`).
    Key,
    /// Neither: after `key:` on its line, after `---`, a scalar's second line.
    Scalar,
}

/// What a line leaves open for the next.
#[derive(Clone, Copy)]
enum Carry {
    Nothing,
    /// A quoted scalar goes on.
    Quoted {
        quote: u8,
        node: At,
    },
    /// A plain scalar in block context goes on over more-indented lines.
    Plain,
    /// A block scalar (`|`, `>`): its lines are text. `parent` is the
    /// enclosing block column (-1 at the root), `indent` the text's column
    /// once known.
    BlockScalar {
        parent: isize,
        indent: Option<usize>,
    },
}

#[derive(Clone, Copy)]
enum Doc {
    NotStarted,
    Open,
    Ended,
}

#[derive(Clone, Copy)]
enum Marker {
    Start,
    End,
}

/// The scan of one line, as steps: each advances through the line or hands
/// over to another, so that no input can make the scan recurse.
enum Step {
    Done,
    /// The parser fails here: nothing after needs counting.
    Stop,
    /// The next token on the line, if any; `node` keeps the column of
    /// properties (`&anchor`, `!tag`) written before the node they belong to.
    Token {
        node: Option<At>,
        allows: Allows,
    },
    Node {
        node: At,
        allows: Allows,
    },
    /// After a node in block context: a `:` makes it a key. `inner` is the
    /// deepest level reached inside it (a flow collection), 0 for a scalar.
    After {
        node: At,
        inner: usize,
        allows: Allows,
    },
    Flow,
    Quoted {
        quote: u8,
        node: At,
        allows: Allows,
    },
    Plain {
        node: At,
        allows: Allows,
    },
}

struct Scanner<'a> {
    text: &'a [u8],
    max_depth: usize,
    pos: usize,
    line_start: usize,
    block: Vec<Level>,
    flow: Vec<FlowLevel>,
    /// Levels the open flow collections add, their pairs included.
    flow_depth: usize,
    /// The node a block-context flow collection starts at.
    flow_node: (At, Allows),
    /// The deepest level the last closed block-context flow collection reached.
    flow_max: usize,
    /// Within a plain scalar inside a flow collection, where quotes are text.
    flow_plain: bool,
    /// 1 while a flow collection at an indentless sequence's column is read:
    /// as a key it ends the sequence, else it is in it, which is checked
    /// once its line tells.
    slack: usize,
    carry: Carry,
    doc: Doc,
    stopped: bool,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8], max_depth: usize) -> Self {
        Scanner {
            text,
            max_depth,
            pos: 0,
            line_start: 0,
            block: Vec::new(),
            flow: Vec::new(),
            flow_depth: 0,
            flow_node: (At { col: 0, offset: 0 }, Allows::Scalar),
            flow_max: 0,
            flow_plain: false,
            slack: 0,
            carry: Carry::Nothing,
            doc: Doc::NotStarted,
            stopped: false,
        }
    }

    fn run(mut self) -> Result<Ending, Fault> {
        while self.pos < self.text.len() {
            self.line_start = self.pos;
            self.line()?;
        }
        Ok(if self.stopped { Ending::SyntaxError } else { Ending::End })
    }

    fn line(&mut self) -> Result<(), Fault> {
        if let Some(marker) = self.document_marker() {
            return self.marker_line(marker);
        }
        let step = match std::mem::replace(&mut self.carry, Carry::Nothing) {
            Carry::Quoted { quote, node } => Step::Quoted { quote, node, allows: Allows::Scalar },
            Carry::BlockScalar { parent, indent } => {
                if self.block_scalar_line(parent, indent) {
                    return Ok(());
                }
                self.start_line()?
            }
            Carry::Plain => match self.plain_line() {
                Some(step) => step,
                None => self.start_line()?,
            },
            Carry::Nothing => self.start_line()?,
        };
        self.drive(step)
    }

    fn drive(&mut self, mut step: Step) -> Result<(), Fault> {
        loop {
            step = match step {
                Step::Done => return Ok(()),
                Step::Stop => {
                    self.stopped = true;
                    self.pos = self.text.len();
                    return Ok(());
                }
                Step::Token { node, allows } => self.token(node, allows),
                Step::Node { node, allows } => self.node(node, allows)?,
                Step::After { node, inner, allows } => self.after_node(node, inner, allows)?,
                Step::Flow => self.flow()?,
                Step::Quoted { quote, node, allows } => self.quoted(quote, node, allows),
                Step::Plain { node, allows } => self.plain(node, allows)?,
            }
        }
    }

    // --- bytes and positions

    fn byte(&self, i: usize) -> Option<u8> {
        self.text.get(i).copied()
    }

    fn is_blank(&self, i: usize) -> bool {
        matches!(self.byte(i), Some(b' ' | b'\t'))
    }

    /// A blank, a line break or the end: what makes `-`, `?` and `:`
    /// indicators rather than text.
    fn blankz(&self, i: usize) -> bool {
        i >= self.text.len() || self.is_blank(i) || break_len(self.text, i) > 0
    }

    fn at_line_end(&self) -> bool {
        self.pos >= self.text.len() || break_len(self.text, self.pos) > 0
    }

    fn at_comment(&self) -> bool {
        self.byte(self.pos) == Some(b'#')
    }

    fn skip_blanks(&mut self) {
        while self.is_blank(self.pos) {
            self.pos += 1;
        }
    }

    /// Moves past the end of the line, whatever is left on it.
    fn next_line(&mut self) -> Step {
        while self.pos < self.text.len() {
            let n = break_len(self.text, self.pos);
            self.pos += n.max(1);
            if n > 0 {
                break;
            }
        }
        Step::Done
    }

    fn here(&self) -> At {
        At { col: self.pos - self.line_start, offset: self.pos }
    }

    // --- nesting

    fn depth(&self) -> usize {
        self.block.len() + self.flow_depth
    }

    fn too_deep(&self, offset: usize) -> Fault {
        Fault {
            offset,
            message: format!("mappings and lists nested more than {} deep (MAX_CONFIG_DEPTH)", self.max_depth),
        }
    }

    /// A block mapping or sequence at `node`, unless one of that kind is open
    /// at its column. `inner` is the deepest level inside a flow collection
    /// that turns out to be the first key: it is one level deeper now.
    fn open_block(&mut self, node: At, kind: Kind, inner: usize) -> Result<(), Fault> {
        if kind == Kind::Map && self.indentless_seq_at(node.col) {
            // A key at the column of a sequence written at its mapping's
            // column ends the sequence.
            self.block.pop();
        }
        if self.block.last().is_some_and(|l| l.col == node.col && l.kind == kind) {
            return Ok(());
        }
        if (self.depth() + 1).max(inner + 1) > self.max_depth {
            return Err(self.too_deep(node.offset));
        }
        self.block.push(Level { col: node.col, kind });
        Ok(())
    }

    /// A sequence at `col` written at its mapping's column (`key:` then
    /// `- entry` below it, not indented).
    fn indentless_seq_at(&self, col: usize) -> bool {
        matches!(self.block.as_slice(), [.., map, seq]
            if (map.col, map.kind, seq.col, seq.kind) == (col, Kind::Map, col, Kind::Seq))
    }

    fn open_flow(&mut self, kind: Kind) -> Result<(), Fault> {
        let depth = self.depth() + 1;
        if depth > self.max_depth.saturating_add(self.slack) {
            return Err(self.too_deep(self.pos));
        }
        self.flow.push(FlowLevel { kind, pair: false, entry_max: depth, max: depth });
        self.flow_depth += 1;
        Ok(())
    }

    fn close_flow(&mut self) {
        let Some(level) = self.flow.pop() else { return };
        self.flow_depth -= 1 + usize::from(level.pair);
        let max = level.max.max(level.entry_max);
        match self.flow.last_mut() {
            Some(parent) => parent.entry_max = parent.entry_max.max(max),
            None => self.flow_max = max,
        }
    }

    /// `?` or `:` in a flow sequence makes the entry a one-pair mapping; its
    /// key, already scanned, is one level deeper than it was counted.
    fn flow_pair(&mut self) -> Result<(), Fault> {
        let Some(level) = self.flow.last() else { return Ok(()) };
        if level.kind == Kind::Map || level.pair {
            return Ok(());
        }
        let deepest = (self.depth() + 1).max(level.entry_max + 1);
        if deepest > self.max_depth.saturating_add(self.slack) {
            return Err(self.too_deep(self.pos));
        }
        if let Some(level) = self.flow.last_mut() {
            level.pair = true;
            level.entry_max = deepest;
        }
        self.flow_depth += 1;
        Ok(())
    }

    /// At `?` in a flow sequence: is the next token `]`? The YAML parser
    /// then takes the `]` for the key and leaves the list open, nesting what
    /// follows deeper than its brackets.
    fn empty_key_closes_sequence(&self) -> bool {
        if self.flow.last().is_none_or(|l| l.kind != Kind::Seq) {
            return false;
        }
        let mut i = self.pos + 1;
        while let Some(b) = self.byte(i) {
            match (b, break_len(self.text, i)) {
                (_, n @ 1..) => i += n,
                (b' ' | b'\t', _) => i += 1,
                (b'#', _) => {
                    while i < self.text.len() && break_len(self.text, i) == 0 {
                        i += 1;
                    }
                }
                (b, _) => return b == b']',
            }
        }
        false
    }

    fn flow_entry_ends(&mut self) {
        let Some(level) = self.flow.last_mut() else { return };
        level.max = level.max.max(level.entry_max);
        if level.pair {
            level.pair = false;
            self.flow_depth -= 1;
        }
        let own = self.block.len() + self.flow_depth;
        if let Some(level) = self.flow.last_mut() {
            level.entry_max = own;
        }
    }

    // --- documents

    /// `---` or `...` at the start of the line, then a blank or the line's end.
    fn document_marker(&self) -> Option<Marker> {
        let marker = match self.text.get(self.pos..self.pos + 3)? {
            b"---" => Marker::Start,
            b"..." => Marker::End,
            _ => return None,
        };
        self.blankz(self.pos + 3).then_some(marker)
    }

    fn marker_line(&mut self, marker: Marker) -> Result<(), Fault> {
        let at = self.pos;
        // The parser closes whatever is open at a document marker.
        self.block.clear();
        self.flow.clear();
        self.flow_depth = 0;
        self.flow_plain = false;
        self.slack = 0;
        self.carry = Carry::Nothing;
        match (marker, self.doc) {
            (Marker::Start, Doc::NotStarted) => self.doc = Doc::Open,
            (Marker::Start, _) => return Err(Fault { offset: at, message: SECOND_DOCUMENT.into() }),
            // `...` before any document is skipped by the parser
            (Marker::End, Doc::NotStarted) => {}
            (Marker::End, _) => self.doc = Doc::Ended,
        }
        self.pos += 3;
        self.skip_blanks();
        if self.at_line_end() || self.at_comment() {
            self.next_line();
            return Ok(());
        }
        self.content()?;
        let node = self.here();
        self.drive(Step::Node { node, allows: Allows::Scalar })
    }

    /// Text that is neither blank, comment nor directive: it opens the
    /// document, or starts a second one after `...`.
    fn content(&mut self) -> Result<(), Fault> {
        if let Doc::Ended = self.doc {
            return Err(Fault { offset: self.pos, message: AFTER_END.into() });
        }
        self.doc = Doc::Open;
        Ok(())
    }

    // --- lines

    /// A line that goes on with nothing from the one before.
    fn start_line(&mut self) -> Result<Step, Fault> {
        if !self.flow.is_empty() {
            return Ok(Step::Flow);
        }
        self.skip_blanks();
        if self.at_line_end() || self.at_comment() {
            return Ok(self.next_line());
        }
        if self.pos == self.line_start && self.byte(self.pos) == Some(b'%') {
            // A directive belongs before a document's `---`.
            if let Doc::Ended = self.doc {
                return Err(Fault { offset: self.pos, message: SECOND_DOCUMENT.into() });
            }
            return Ok(self.next_line());
        }
        self.content()?;
        let node = self.here();
        while self.block.last().is_some_and(|l| l.col > node.col) {
            self.block.pop();
        }
        Ok(Step::Node { node, allows: Allows::Collection })
    }

    /// A line of a block scalar's text (true, skipped), or the line that
    /// ends it (false, left for the caller).
    fn block_scalar_line(&mut self, parent: isize, indent: Option<usize>) -> bool {
        let spaces = self.text[self.pos..].iter().take_while(|&&b| b == b' ').count();
        let after = self.pos + spaces;
        if after >= self.text.len() || break_len(self.text, after) > 0 {
            self.carry = Carry::BlockScalar { parent, indent };
            self.next_line();
            return true;
        }
        // Without an explicit indentation the first text line sets it, and
        // it is always at least 1.
        let least = indent.unwrap_or_else(|| (parent + 1).max(1).unsigned_abs());
        if spaces < least {
            return false;
        }
        self.carry = Carry::BlockScalar { parent, indent: Some(indent.unwrap_or(spaces)) };
        self.next_line();
        true
    }

    /// A line after a block plain scalar: it goes on if the line is more
    /// indented than the enclosing block collection. None: the line is new.
    fn plain_line(&mut self) -> Option<Step> {
        let start = self.pos;
        self.skip_blanks();
        if self.at_line_end() {
            // an empty line folds into the scalar
            self.carry = Carry::Plain;
            return Some(self.next_line());
        }
        if self.at_comment() {
            return Some(self.next_line());
        }
        let node = self.here();
        if self.block.last().is_none_or(|l| node.col > l.col) {
            return Some(Step::Plain { node, allows: Allows::Scalar });
        }
        self.pos = start;
        None
    }

    // --- tokens

    fn token(&mut self, node: Option<At>, allows: Allows) -> Step {
        self.skip_blanks();
        if self.at_line_end() || self.at_comment() {
            return self.next_line();
        }
        Step::Node { node: node.unwrap_or_else(|| self.here()), allows }
    }

    /// At the first byte of a node (never a blank, a comment or a line end).
    fn node(&mut self, node: At, allows: Allows) -> Result<Step, Fault> {
        let Some(b) = self.byte(self.pos) else { return Ok(Step::Done) };
        Ok(match b {
            b'-' | b'?' | b':' if self.blankz(self.pos + 1) => {
                // `: ` after a property is an empty key's (`&a : b`)
                let fits = allows == Allows::Collection || (b == b':' && allows == Allows::Key);
                if !fits {
                    // `key: - a`, `&a - b`, `--- ? c`
                    return Ok(Step::Stop);
                }
                let kind = if b == b'-' { Kind::Seq } else { Kind::Map };
                self.open_block(node, kind, 0)?;
                self.pos += 1;
                // the entry's own node may follow: `- - a`, `- a: b`, `? a: b`
                Step::Token { node: None, allows: Allows::Collection }
            }
            b'&' | b'!' => {
                self.skip_property();
                let allows = if allows == Allows::Scalar { Allows::Scalar } else { Allows::Key };
                Step::Token { node: Some(node), allows }
            }
            b'*' => {
                self.skip_property();
                Step::After { node, inner: 0, allows }
            }
            b'[' | b'{' => {
                self.flow_node = (node, allows);
                self.slack = usize::from(self.indentless_seq_at(node.col));
                Step::Flow
            }
            b'"' | b'\'' => {
                self.pos += 1;
                Step::Quoted { quote: b, node, allows }
            }
            b'|' | b'>' => self.block_scalar_header(),
            _ => Step::Plain { node, allows },
        })
    }

    fn after_node(&mut self, node: At, inner: usize, allows: Allows) -> Result<Step, Fault> {
        self.skip_blanks();
        // a key is on one line (the node started on this one), where keys may be
        let key_ok = allows != Allows::Scalar && node.offset >= self.line_start;
        if key_ok && self.byte(self.pos) == Some(b':') && self.blankz(self.pos + 1) {
            self.open_block(node, Kind::Map, inner)?;
            self.pos += 1;
            return Ok(Step::Token { node: None, allows: Allows::Scalar });
        }
        // no key: what was read with slack is checked without
        if inner > self.max_depth {
            return Err(self.too_deep(node.offset));
        }
        if self.at_line_end() || self.at_comment() {
            return Ok(self.next_line());
        }
        // a second node on the line, or a key where none may be
        Ok(Step::Stop)
    }

    /// A plain scalar in block context: it ends at `: ` (a key), at ` #` (a
    /// comment), or goes on at the line's end.
    fn plain(&mut self, node: At, allows: Allows) -> Result<Step, Fault> {
        loop {
            if self.at_line_end() {
                self.carry = Carry::Plain;
                return Ok(self.next_line());
            }
            match self.text[self.pos] {
                b':' if self.blankz(self.pos + 1) => {
                    if allows == Allows::Scalar {
                        // `a: b: c`
                        return Ok(Step::Stop);
                    }
                    self.open_block(node, Kind::Map, 0)?;
                    self.pos += 1;
                    return Ok(Step::Token { node: None, allows: Allows::Scalar });
                }
                b' ' | b'\t' if self.byte(self.pos + 1) == Some(b'#') => return Ok(self.next_line()),
                _ => self.pos += 1,
            }
        }
    }

    /// Past an anchor (`&a`), alias (`*a`) or tag (`!t`, `!<uri>`). The
    /// parser refuses a property followed by anything but a blank or an
    /// indicator, so stopping early is never wrong.
    fn skip_property(&mut self) {
        let sigil = self.text[self.pos];
        self.pos += 1;
        if sigil == b'!' && self.byte(self.pos) == Some(b'<') {
            while let Some(b) = self.byte(self.pos) {
                if self.blankz(self.pos) {
                    return;
                }
                self.pos += 1;
                if b == b'>' {
                    return;
                }
            }
            return;
        }
        let in_name = |b: u8| match sigil {
            b'!' => !matches!(b, b',' | b'[' | b']' | b'{' | b'}'),
            _ => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
        };
        while self.byte(self.pos).is_some_and(in_name) && !self.blankz(self.pos) {
            self.pos += 1;
        }
    }

    /// `|` or `>` and its indicators; the lines after it are its text.
    fn block_scalar_header(&mut self) -> Step {
        self.pos += 1;
        let mut increment = None;
        while let Some(b) = self.byte(self.pos) {
            match b {
                b'1'..=b'9' => increment = Some(usize::from(b - b'0')),
                b'+' | b'-' => {}
                _ => break,
            }
            self.pos += 1;
        }
        let parent = self.block.last().map_or(-1, |l| l.col as isize);
        let indent = increment.map(|i| parent.max(0).unsigned_abs() + i);
        self.next_line();
        self.carry = Carry::BlockScalar { parent, indent };
        Step::Done
    }

    fn quoted(&mut self, quote: u8, node: At, allows: Allows) -> Step {
        if !self.skip_quoted(quote) {
            self.carry = Carry::Quoted { quote, node };
            return Step::Done;
        }
        if self.flow.is_empty() {
            Step::After { node, inner: 0, allows }
        } else {
            self.flow_plain = false;
            Step::Flow
        }
    }

    /// Past the closing quote (true), or past the end of the line (false).
    fn skip_quoted(&mut self, quote: u8) -> bool {
        while let Some(b) = self.byte(self.pos) {
            let n = break_len(self.text, self.pos);
            if n > 0 {
                self.pos += n;
                return false;
            }
            self.pos += 1;
            match b {
                // '' is a quote inside '...'
                b'\'' if quote == b'\'' && self.byte(self.pos) == Some(b'\'') => self.pos += 1,
                // \x is an escape inside "..."; an escaped line break is left
                // for the loop, which ends the line there
                b'\\' if quote == b'"' && self.pos < self.text.len() && break_len(self.text, self.pos) == 0 => {
                    self.pos += 1
                }
                _ if b == quote => return true,
                _ => {}
            }
        }
        false
    }

    /// Inside flow collections, to the line's end or to the close of the
    /// outermost one. Every bracket outside quoted scalars and comments is
    /// an indicator here: plain scalars cannot hold them.
    fn flow(&mut self) -> Result<Step, Fault> {
        while let Some(b) = self.byte(self.pos) {
            if break_len(self.text, self.pos) > 0 {
                return Ok(self.next_line());
            }
            let token_start = !self.flow_plain;
            match b {
                b' ' | b'\t' => {}
                b'#' if token_start || self.pos == self.line_start || self.is_blank(self.pos - 1) => {
                    self.flow_plain = false;
                    return Ok(self.next_line());
                }
                b'[' | b'{' => {
                    self.open_flow(if b == b'[' { Kind::Seq } else { Kind::Map })?;
                    self.flow_plain = false;
                }
                b']' | b'}' => {
                    self.close_flow();
                    self.flow_plain = false;
                    if self.flow.is_empty() {
                        self.pos += 1;
                        self.slack = 0;
                        let (node, allows) = self.flow_node;
                        return Ok(Step::After { node, inner: self.flow_max, allows });
                    }
                }
                b',' => {
                    self.flow_entry_ends();
                    self.flow_plain = false;
                }
                b'"' | b'\'' if token_start => {
                    self.pos += 1;
                    return Ok(Step::Quoted { quote: b, node: self.flow_node.0, allows: Allows::Scalar });
                }
                b'?' if token_start && self.empty_key_closes_sequence() => {
                    return Err(Fault { offset: self.pos, message: EMPTY_KEY.into() });
                }
                b'?' | b':' if token_start => self.flow_pair()?,
                // `:` ends a plain scalar before a blank or an indicator
                b':' if self.blankz(self.pos + 1)
                    || matches!(self.byte(self.pos + 1), Some(b',' | b'?' | b'[' | b']' | b'{' | b'}')) =>
                {
                    self.flow_plain = false;
                    self.flow_pair()?;
                }
                b'&' | b'!' | b'*' if token_start => {
                    self.skip_property();
                    continue;
                }
                b'-' if token_start && self.blankz(self.pos + 1) => {}
                _ if token_start => self.flow_plain = true,
                _ => {}
            }
            self.pos += 1;
        }
        Ok(Step::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Nesting as serde_yaml builds it.
    fn depth(value: &serde_yaml::Value) -> usize {
        use serde_yaml::Value;
        match value {
            Value::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Mapping(map) => 1 + map.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
            Value::Tagged(tagged) => depth(&tagged.value),
            _ => 0,
        }
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "a", "b", ": ", ":", "- ", "-", "? ", "?", "[", "]", "{", "}", ", ", ",", "'", "\"", "#", " ", "  ", "\n",
        "\n  ", "\n    ", "\n- ", "\n  - ", "|", ">", "|2", "&x ", "!t ", "!<x[>", "x'y", "\\", "---", "...", "\r",
        "\t", "''", "a: ", "\n  a: ", "[a", "b]", "{a: ", "\u{85}", "\u{2028}", "%Y",
    ];

    /// Random YAML in every style the scan tells apart: block and flow
    /// collections, keys of every kind, quoted, plain and block scalars
    /// holding indicators, comments, properties.
    struct Gen {
        rng: Rng,
        out: String,
    }

    impl Gen {
        fn pick(&mut self, items: &[&str]) {
            let item = items[self.rng.below(items.len())];
            self.out.push_str(item);
        }

        fn newline(&mut self, indent: usize) {
            if self.rng.below(6) == 0 {
                self.pick(&[" # c [[ {", " #", "  # 'x"]);
            }
            self.pick(&["\n", "\n", "\r\n", "\n\n", "\u{85}"]);
            self.out.extend(std::iter::repeat_n(' ', indent));
        }

        fn scalar(&mut self) {
            self.pick(&[
                "a",
                "b c",
                "a'b",
                "a#b",
                "a [b",
                "-1",
                "a:b",
                "'q [ {'",
                "'it''s'",
                "\"d \\\" [\"",
                "\"e\\\\\"",
                "''",
                "\"\"",
                "*x",
                "!t a",
                "&x a",
                "x]",
                "a ,b",
            ]);
        }

        fn flow(&mut self, level: usize, in_seq: bool) {
            if level == 0 || self.rng.below(3) == 0 {
                return self.scalar();
            }
            let seq = self.rng.below(2) == 0;
            self.out.push(if seq { '[' } else { '{' });
            for i in 0..self.rng.below(4) {
                if i > 0 {
                    self.pick(&[", ", ",", " , ", ",\n  "]);
                }
                if !seq || (in_seq && self.rng.below(4) == 0) {
                    self.flow(level - 1, seq);
                    self.pick(&[": ", " : ", ":\n "]);
                }
                if self.rng.below(5) == 0 {
                    self.pick(&["&y ", "!t "]);
                }
                self.flow(level - 1, seq);
            }
            if self.rng.below(6) == 0 {
                self.pick(&[" #c ]\n", "\n"]);
            }
            self.out.push(if seq { ']' } else { '}' });
        }

        /// A value after `key:` or `- `, or the document itself.
        fn value(&mut self, indent: usize, level: usize) {
            match self.rng.below(if level == 0 { 2 } else { 6 }) {
                0 => {
                    self.out.push(' ');
                    self.scalar();
                }
                1 => {
                    self.pick(&[" |", " >", " |2", " |-"]);
                    for _ in 0..self.rng.below(3) {
                        self.newline(indent + 2);
                        self.pick(&["text [[", "- x", "k: v", "'", "  more {"]);
                    }
                }
                2 => {
                    self.out.push(' ');
                    self.flow(level, false);
                }
                3 => {
                    let inner = indent + 2 * self.rng.below(2) + 1;
                    self.block(inner.max(indent + 1), level - 1);
                }
                _ => self.block(indent + 2, level - 1),
            }
        }

        fn block(&mut self, indent: usize, level: usize) {
            let seq = self.rng.below(2) == 0;
            for _ in 0..1 + self.rng.below(3) {
                self.newline(indent);
                if seq {
                    self.out.push('-');
                    if self.rng.below(4) == 0 {
                        // a compact mapping or sequence in the entry
                        self.pick(&[" k:", " - ", " ? "]);
                        if self.out.ends_with(' ') {
                            self.scalar();
                            continue;
                        }
                    }
                    self.value(indent + 2, level);
                } else {
                    self.pick(&["k", "\"k\"", "'k'", "[a]", "*x ", "&x k", "? k\n", "k2"]);
                    if self.out.ends_with('\n') {
                        self.out.extend(std::iter::repeat_n(' ', indent));
                    }
                    self.out.push(':');
                    self.value(indent, level);
                }
            }
        }

        fn document(&mut self) -> String {
            self.out.clear();
            if self.rng.below(4) == 0 {
                self.pick(&["---", "--- ", "# c\n---", "%YAML 1.1\n---"]);
            }
            match self.rng.below(3) {
                0 => self.flow(4, false),
                _ => self.block(0, 4),
            }
            if self.rng.below(5) == 0 {
                self.pick(&["\n...\n", "\n...\n# c\n", "\n---\n", "\n...\nx\n", "\n--- a\n"]);
            }
            // one random edit in three, to reach the texts around the valid ones
            if self.rng.below(3) == 0 && !self.out.is_empty() {
                let mut at = self.rng.below(self.out.len());
                while !self.out.is_char_boundary(at) {
                    at -= 1;
                }
                let piece = PIECES[self.rng.below(PIECES.len())];
                self.out.insert_str(at, piece);
            }
            self.out.clone()
        }
    }

    /// Checks the scan against serde_yaml on `text`: a document nested N
    /// deep passes at limit N and is refused at N - 1; a second document
    /// that parses is refused. Returns whether `text` was compared.
    fn agrees_with_serde_yaml(text: &str, failures: &mut Vec<String>) -> bool {
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            // an alias nests its anchor's node wherever it is used, deeper
            // than the text: serde_yaml stops that at its own limit (128)
            Ok(_) if text.contains('*') => false,
            // refused on purpose: serde_yaml nests what follows `? ]` deeper
            Ok(_) if scan(text, usize::MAX).is_err_and(|f| f.message == EMPTY_KEY) => false,
            Ok(value) => {
                let want = depth(&value);
                let at_limit = scan(text, want);
                let below_refused = want == 0 || scan(text, want - 1).is_err();
                if !matches!(at_limit, Ok(Ending::End)) || !below_refused {
                    failures
                        .push(format!("{text:?}: depth {want}; at it: {at_limit:?}, refused below: {below_refused}"));
                }
                true
            }
            // serde_yaml says so also of text after the top-level value that
            // starts no document: only a second document that parses must be
            // refused here
            Err(err) if err.to_string().contains("more than one document") => {
                let second = serde_yaml::Deserializer::from_str(text).nth(1).map(serde::de::IgnoredAny::deserialize);
                if matches!(second, Some(Ok(_))) && scan(text, usize::MAX).is_ok() {
                    failures.push(format!("{text:?}: a second document, accepted"));
                }
                true
            }
            Err(_) => false,
        }
    }

    fn assert_agreement(texts: impl Iterator<Item = String>) {
        let (mut compared, mut failures) = (0, Vec::new());
        for text in texts {
            compared += usize::from(agrees_with_serde_yaml(&text, &mut failures));
        }
        assert!(compared > 1000, "only {compared} texts compared");
        let shown = &failures[..failures.len().min(20)];
        assert!(failures.is_empty(), "{} of {compared} texts:\n{}", failures.len(), shown.join("\n"));
    }

    #[test]
    fn counts_nesting_of_generated_documents_as_serde_yaml() {
        let mut gen = Gen { rng: Rng(0x0DDB_A11C_0FFE_E001), out: String::new() };
        assert_agreement((0..20_000).map(|_| gen.document()));
    }

    #[test]
    fn counts_nesting_of_random_pieces_as_serde_yaml() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        assert_agreement((0..50_000).map(|_| {
            let len = 1 + rng.below(16);
            (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
        }));
    }

    #[test]
    fn positions_count_lines_as_the_parser_does() {
        let text = "a\r\nb\rc\u{85}d\u{2028}é\u{2029}éx\n";
        let x = text.find('x').expect("x");
        assert_eq!(position(text, x), (6, 2));
        assert_eq!(position(text, 0), (1, 1));
    }

    /// Inputs the scan reads to the end, each about 1 MiB: a quadratic
    /// scan would take hours on them.
    #[test]
    fn scans_a_mebibyte_in_linear_time() {
        let mib = |unit: &str| unit.repeat((1 << 20) / unit.len());
        let staircase: String = (0..30).chain((0..30).rev()).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let shapes = [
            mib("- [a, [b, {c: d, e: [f]}], 'g[', \"h{\"]\n"),
            format!("a: {}", mib("\"a\" ")),
            format!("a: {}", mib("&a ")),
            format!("a: {}", mib("!t ")),
            mib("# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n"),
            format!("a: [{}]", mib("'it''s [', ")),
            format!("a: |\n{}", mib("  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n")),
            format!("a: {}", mib("b [[[[ ")),
            mib(&staircase),
            format!("[{}]", mib("[[[[a: b]]]], ")),
        ];
        for text in &shapes {
            let started = std::time::Instant::now();
            let result = check(text);
            let took = started.elapsed();
            let head: String = text.chars().take(40).collect();
            assert!(result.is_ok(), "{head:?}…: {result:?}");
            // about 0.3 s unoptimized on a busy 2-core machine
            assert!(took < std::time::Duration::from_secs(3), "{head:?}…: {took:?}");
        }
    }
}

//! The parser: one pass over the name, every rejection with the character position (0-based,
//! counted in characters) and the rule it breaks. Names are ASCII; anything else is rejected
//! before parsing, so byte and character positions agree below.
//!
//! v3 names have one spelling per flavor. Deprecated v1 names are read the way the SCS reference
//! tool reads them (`flavor-name-check.py` and the `SyntaxV1` patterns of its module
//! `flavor_names.py`, in `Tests/iaas/scs_0100_flavor_naming/` of the GitHub repository
//! SovereignCloudStack/standards), so that hvagent accepts exactly the v1 names that tool
//! accepts (up to the bounds hvagent keeps for both syntaxes: counts fit u32, at most
//! [`MAX_DISKS`] disks). Where that differs from v3, the code below says why.

use super::{
    CpuBrand, CpuType, CpuVendor, Disk, DiskType, FlavorSpec, Gpu, GpuKind, GpuVendor, Hypervisor,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {rule}")]
pub struct ParseError {
    pub position: usize,
    pub rule: String,
}

/// Which syntax a name was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `SCS-4C:32:100s-kvm`: deprecated.
    V1,
    /// `SCS-4C-32-100s_kvm`: the syntax of scs-0100 v2 and v3, which did not change it.
    V3,
}

impl Syntax {
    pub fn as_str(self) -> &'static str {
        match self {
            Syntax::V1 => "v1",
            Syntax::V3 => "v3",
        }
    }

    /// (separator inside the main part and the GPU extension, separator before each extension)
    fn separators(self) -> (u8, u8) {
        match self {
            Syntax::V1 => (b':', b'-'),
            Syntax::V3 => (b'-', b'_'),
        }
    }
}

/// A parsed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub spec: FlavorSpec,
    pub syntax: Syntax,
    /// Deprecations: the name is valid but should be written differently.
    pub warnings: Vec<String>,
}

const PREFIX: &str = "SCS-";

/// Most disks a name may ask for with `Mx`.
pub const MAX_DISKS: u32 = 64;

/// Parses any SCS flavor name, v3 or (deprecated) v1 syntax.
pub fn parse(name: &str) -> Result<Parsed, ParseError> {
    if let Some((position, c)) = name.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        return Err(ParseError {
            position,
            rule: format!("unexpected character {c:?}: flavor names are ASCII"),
        });
    }
    if !name.starts_with(PREFIX) {
        return Err(ParseError {
            position: 0,
            rule: "SCS flavor names start with \"SCS-\"".into(),
        });
    }
    let syntax = if name.contains(':') {
        Syntax::V1
    } else {
        Syntax::V3
    };
    let mut p = Parser {
        s: name.as_bytes(),
        pos: PREFIX.len(),
        syntax,
        main: syntax.separators().0,
        ext: syntax.separators().1,
        notes: Vec::new(),
    };
    let spec = p.flavor()?;
    let mut warnings = Vec::new();
    if syntax == Syntax::V1 {
        warnings.push(format!(
            "v1 syntax is deprecated (':' and '-' became '-' and '_'); the v3 name is {}",
            spec.name()
        ));
    }
    warnings.append(&mut p.notes);
    Ok(Parsed {
        spec,
        syntax,
        warnings,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    syntax: Syntax,
    /// Separator inside the main part (and inside the GPU extension).
    main: u8,
    /// Separator before each extension.
    ext: u8,
    /// Warnings about parts of a v1 name that are accepted but carry no meaning.
    notes: Vec<String>,
}

fn err<T>(position: usize, rule: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        position,
        rule: rule.into(),
    })
}

/// Extensions in the order the standard fixes.
const STAGES: [&str; 5] = ["hypervisor", "hwv", "CPU brand", "GPU", "ib"];

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn text(&self, from: usize, to: usize) -> &'a str {
        // The input is ASCII, so every byte range is valid UTF-8.
        std::str::from_utf8(&self.s[from..to]).unwrap_or("")
    }

    /// A run of ASCII digits starting here (maybe empty), as (start, digits).
    fn digits(&mut self) -> (usize, &'a str) {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        (start, self.text(start, self.pos))
    }

    fn flavor(&mut self) -> Result<FlavorSpec, ParseError> {
        let (cpus, cpu_type, insecure) = self.cpu()?;
        let main = self.main as char;
        if !self.eat(self.main) {
            return err(
                self.pos,
                format!("expected '{main}' and the RAM after the CPU part"),
            );
        }
        let (ram_half_gib, ecc, ram_oversubscribed) = self.ram()?;
        let disk = if self.eat(self.main) {
            Some(self.disk()?)
        } else {
            None
        };
        let mut spec = FlavorSpec {
            cpus,
            cpu_type,
            insecure,
            ram_half_gib,
            ecc,
            ram_oversubscribed,
            disk,
            hypervisor: None,
            hwv: false,
            cpu_brand: None,
            gpu: None,
            ib: false,
        };
        self.extensions(&mut spec)?;
        Ok(spec)
    }

    fn cpu(&mut self) -> Result<(u32, CpuType, bool), ParseError> {
        let (start, digits) = self.digits();
        let cpus = positive_in(self.syntax, start, digits, "CPU count")?;
        let at = self.pos;
        let letter = self.peek();
        let cpu_type = match letter.and_then(|c| CpuType::from_letter(c as char)) {
            Some(t) => {
                self.pos += 1;
                t
            }
            None => return err(at, cpu_type_rule(letter)),
        };
        let insecure = self.eat(b'i');
        Ok((cpus, cpu_type, insecure))
    }

    fn ram(&mut self) -> Result<(u32, bool, bool), ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'.') {
            self.pos += 1;
        }
        let text = self.text(start, self.pos);
        let half = match self.syntax {
            Syntax::V3 => ram_halves(text),
            Syntax::V1 => ram_halves_as_float(text),
        };
        let half = half.ok_or_else(|| ParseError {
            position: start,
            rule: format!("RAM must be a positive multiple of 0.5, got {text:?}"),
        })?;
        let ecc = !self.eat(b'u');
        let oversubscribed = self.eat(b'o');
        if oversubscribed && self.peek() == Some(b'u') {
            return err(self.pos, "RAM suffixes come in the order u, o (\"uo\")");
        }
        Ok((half, ecc, oversubscribed))
    }

    fn disk(&mut self) -> Result<Disk, ParseError> {
        let (start, digits) = self.digits();
        let (count, size_start, size_digits) = if self.eat(b'x') {
            let count = self.disk_count(start, digits)?;
            let (s, d) = self.digits();
            (count, s, d)
        } else {
            (1, start, digits)
        };
        let size_gb = if size_digits.is_empty() {
            None
        } else {
            Some(positive_in(
                self.syntax,
                size_start,
                size_digits,
                "disk size (GB)",
            )?)
        };
        if self.peek() == Some(b'.') {
            return err(size_start, "disk size must be a whole number of GB");
        }
        let kind = match self.peek().and_then(|c| DiskType::from_letter(c as char)) {
            Some(kind) => {
                self.pos += 1;
                Some(kind)
            }
            None => None,
        };
        Ok(Disk {
            count,
            size_gb,
            kind,
        })
    }

    /// The `M` of `MxN`, given as `digits` before the `x`.
    fn disk_count(&self, start: usize, digits: &str) -> Result<u32, ParseError> {
        let disks = match self.syntax {
            // flavor-name-check.py's v1 disk pattern makes the number before "x" optional and
            // defaults it to 1, and takes "1x" too: "x10" and "1x10" are both one 10 GB disk.
            Syntax::V1 if digits.is_empty() => 1,
            Syntax::V1 => positive_in(self.syntax, start, digits, "disk count")?,
            Syntax::V3 => {
                let disks = positive(start, digits, "disk count")?;
                if disks == 1 {
                    return err(start, "one disk is written without \"1x\"");
                }
                disks
            }
        };
        // Each disk becomes an extra_specs entry (and later a volume): bound the work.
        if disks > MAX_DISKS {
            return err(
                start,
                format!("disk count must be at most {MAX_DISKS}, got {disks}"),
            );
        }
        Ok(disks)
    }

    /// Where the extension token starting at `start` ends: at the next extension separator,
    /// except for a v1 GPU. flavor-name-check.py's v1 GPU pattern reads the generation as
    /// everything after the `G`/`g` up to the next ':' or 'h', '-' included, so a v1 GPU token
    /// runs over any '-' before its first ':' or 'h' (and `gpu` then rejects that '-').
    fn token_end(&self, start: usize) -> usize {
        let mut end = start;
        if self.syntax == Syntax::V1 && matches!(self.s.get(start), Some(b'G' | b'g')) {
            end = start + 1;
            while self
                .s
                .get(end)
                .is_some_and(|&c| c != self.main && c != b'h')
            {
                end += 1;
            }
        }
        while self.s.get(end).is_some_and(|&c| c != self.ext) {
            end += 1;
        }
        end
    }

    fn hypervisor(&self, sep_at: usize, token: &str) -> Result<Hypervisor, ParseError> {
        let found = Hypervisor::ALL.into_iter().find(|h| h.code() == token);
        match found {
            // Cloud Hypervisor came with scs-0100 v3.3, long after v1: the v1 standard's table and
            // the v1 hypervisor pattern of flavor_names.py (the reference) do not have "chy".
            Some(Hypervisor::CloudHypervisor) if self.syntax == Syntax::V1 => err(
                sep_at,
                "hypervisor \"-chy\" does not exist in v1 syntax (it came with scs-0100 v3.3); use the v3 name",
            ),
            Some(h) => Ok(h),
            None => err(sep_at, format!("unknown hypervisor {token:?}")),
        }
    }

    fn extensions(&mut self, spec: &mut FlavorSpec) -> Result<(), ParseError> {
        let mut last: Option<(usize, usize)> = None; // (stage, token start)
        while self.pos < self.s.len() {
            let sep_at = self.pos;
            if !self.eat(self.ext) {
                let what = describe(self.peek());
                let rule = if self.peek() == Some(self.main) {
                    format!("unexpected {what}: the main part has at most CPU, RAM and disk")
                } else if spec.disk.is_none() && self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    format!("unexpected {what} after the RAM")
                } else {
                    format!(
                        "unexpected {what}; extensions start with '{}'",
                        self.ext as char
                    )
                };
                return err(sep_at, rule);
            }
            let start = self.pos;
            self.pos = self.token_end(start);
            let token = self.text(start, self.pos);
            let hypervisors = match self.syntax {
                Syntax::V3 => "kvm/chy/xen/vmw/hyv/bms",
                Syntax::V1 => "kvm/xen/vmw/hyv/bms",
            };
            let stage = classify(token).ok_or_else(|| ParseError {
                position: sep_at,
                rule: format!(
                    "unknown extension \"{}{token}\" (known: hypervisor {hypervisors}, hwv, CPU brand i/z/a/r, GPU G/g, ib)",
                    self.ext as char
                ),
            })?;
            if let Some((prev, _)) = last
                && prev >= stage
            {
                return err(
                    sep_at,
                    format!(
                        "extensions must appear in the order {}; {} cannot follow {}",
                        STAGES.join(", "),
                        STAGES[stage],
                        STAGES[prev]
                    ),
                );
            }
            last = Some((stage, start));
            match stage {
                0 => spec.hypervisor = Some(self.hypervisor(sep_at, token)?),
                1 => spec.hwv = true,
                2 => spec.cpu_brand = Some(brand(start, token, self.syntax)?),
                3 => spec.gpu = Some(gpu(start, token, self.syntax, &mut self.notes)?),
                _ => spec.ib = true,
            }
        }
        Ok(())
    }
}

/// Which extension a token (without its separator) is, by its shape.
fn classify(token: &str) -> Option<usize> {
    if Hypervisor::ALL.iter().any(|h| h.code() == token) {
        return Some(0);
    }
    match token {
        "hwv" => return Some(1),
        "ib" => return Some(4),
        _ => {}
    }
    let mut chars = token.chars();
    match chars.next()? {
        c if CpuVendor::from_letter(c).is_some()
            && chars.all(|c| c.is_ascii_digit() || c == 'h') =>
        {
            Some(2)
        }
        'G' | 'g' => Some(3),
        _ => None,
    }
}

fn brand(start: usize, token: &str, syntax: Syntax) -> Result<CpuBrand, ParseError> {
    let bytes = token.as_bytes();
    let vendor = CpuVendor::from_letter(bytes[0] as char).ok_or_else(|| ParseError {
        position: start,
        rule: "CPU brand must start with i, z, a or r".into(),
    })?;
    let gen_end = 1 + bytes[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    let gen_text = &token[1..gen_end];
    let generation = if gen_text.is_empty() {
        None
    } else {
        let max = vendor.generations().len() - 1;
        // v1 names are read with Python's int(), as flavor-name-check.py does: "03" is 3.
        let spelled_once = gen_text == "0" || !gen_text.starts_with('0');
        let value = gen_text
            .parse::<usize>()
            .ok()
            .filter(|g| *g <= max && (spelled_once || syntax == Syntax::V1));
        match value {
            Some(g) => Some(g as u8),
            None => {
                let zeros = match syntax {
                    Syntax::V3 => " without leading zeros",
                    Syntax::V1 => "",
                };
                return err(
                    start + 1,
                    format!(
                        "{} generation must be 0-{max}{zeros}, got {gen_text:?}",
                        vendor_name(vendor)
                    ),
                );
            }
        }
    };
    let h = &token[gen_end..];
    if h.len() > 3 || h.bytes().any(|c| c != b'h') {
        return err(
            start + gen_end,
            format!("CPU frequency level is h, hh or hhh, got {h:?}"),
        );
    }
    Ok(CpuBrand {
        vendor,
        generation,
        frequency_level: h.len() as u8,
    })
}

fn vendor_name(v: CpuVendor) -> &'static str {
    match v {
        CpuVendor::Intel => "Intel",
        CpuVendor::Amd => "AMD",
        CpuVendor::Arm => "ARM",
        CpuVendor::RiscV => "RISC-V",
    }
}

/// The GPU extension; `token` is it without its separator. Warnings go to `notes`.
fn gpu(
    start: usize,
    token: &str,
    syntax: Syntax,
    notes: &mut Vec<String>,
) -> Result<Gpu, ParseError> {
    let (sep, ext) = syntax.separators();
    let b = token.as_bytes();
    let kind = if b[0] == b'G' {
        GpuKind::Passthrough
    } else {
        GpuKind::Virtual
    };
    let vendor = match b.get(1) {
        Some(b'N') => GpuVendor::Nvidia,
        Some(b'A') => GpuVendor::Amd,
        Some(b'I') => GpuVendor::Intel,
        other => {
            return err(
                start + 1,
                format!(
                    "GPU vendor must be N (Nvidia), A (AMD) or I (Intel), got {}",
                    describe(other.copied())
                ),
            );
        }
    };
    let mut i = 2;
    while i < b.len() && b[i] != sep && b[i] != b'h' {
        i += 1;
    }
    let generation = gpu_generation(start + 2, &token[2..i], vendor, ext)?;
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let number = |i: &mut usize, what: &str| -> Result<u32, ParseError> {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        positive_in(syntax, start + from, &token[from..*i], what)
    };
    let levels = |i: &mut usize| -> Result<u8, ParseError> {
        let from = *i;
        while at(*i, b'h') {
            *i += 1;
        }
        if *i - from > 2 {
            return err(start + *i - 1, "GPU h levels are h or hh");
        }
        Ok((*i - from) as u8)
    };
    // The tail: [SEP units] [h levels] [SEP VRAM] [h levels], each part optional as in the
    // reference's pattern; v3 takes h levels only after units, and so VRAM too.
    let compute_units = if at(i, sep) {
        i += 1;
        Some(number(&mut i, "GPU compute unit count")?)
    } else {
        None
    };
    if compute_units.is_none() && syntax == Syntax::V3 && at(i, b'h') {
        return err(
            start + i,
            "GPU h levels follow the compute unit count (e.g. GNa-64h)",
        );
    }
    let mut high_freq = levels(&mut i)?;
    let mut vram_gib = if at(i, sep) {
        i += 1;
        Some(number(&mut i, "GPU VRAM (GiB)")?)
    } else {
        None
    };
    let mut hbm = levels(&mut i)?;
    if i < b.len() {
        return err(
            start + i,
            format!("unexpected {} in the GPU extension", describe(Some(b[i]))),
        );
    }
    if compute_units.is_none() && (high_freq > 0 || vram_gib.is_some()) {
        // Only v1 gets here. flavor-name-check.py's v1 GPU pattern makes each part of the
        // tail optional on its own, so it accepts h levels and VRAM with no compute unit
        // count ("GNah", "GNah:16"); its own description of a name (prettyname) shows
        // neither without compute units. They say nothing: accept the name, drop them.
        notes.push(format!(
            "GPU h levels and VRAM without a compute unit count carry no meaning; \"{}\" is read as \"{}\"",
            token,
            &token[..2 + generation.map_or(0, str::len)]
        ));
        (high_freq, vram_gib, hbm) = (0, None, 0);
    }
    Ok(Gpu {
        kind,
        vendor,
        generation,
        compute_units,
        high_freq_level: high_freq,
        vram_gib,
        hbm_level: hbm,
    })
}

/// The GPU generation: `text` is everything after the vendor letter up to the next main
/// separator or 'h'. In v1 that text may run over a '-' (see `Parser::token_end`).
fn gpu_generation(
    start: usize,
    text: &str,
    vendor: GpuVendor,
    ext: u8,
) -> Result<Option<&'static str>, ParseError> {
    // Check the part before any extension separator first, so that the error names what is
    // wrong with the generation itself.
    let (code, rest) = text.split_at(text.find(ext as char).unwrap_or(text.len()));
    let generation = if code.is_empty() {
        None
    } else {
        let found = vendor.generations().iter().find(|(c, _)| *c == code);
        match found {
            Some((c, _)) => Some(*c),
            None => {
                let known: Vec<&str> = vendor.generations().iter().map(|(c, _)| *c).collect();
                return err(
                    start,
                    format!(
                        "unknown {} GPU generation {code:?} (known: {})",
                        vendor.word(),
                        known.join(", ")
                    ),
                );
            }
        }
    };
    if !rest.is_empty() {
        // flavor-name-check.py reads a v1 GPU generation up to the next ':' or 'h', so what
        // follows a GPU without compute units becomes part of its generation: no generation
        // has a '-', and the reference rejects the name ("SCS-2V:4-GNa-ib").
        return err(
            start + code.len(),
            format!(
                "in v1 syntax an extension cannot follow a GPU without compute units: {rest:?} would be read as part of its generation; give the compute units (e.g. GNa:64{rest})"
            ),
        );
    }
    Ok(generation)
}

/// A positive integer without leading zeros that fits u32.
fn positive(start: usize, digits: &str, what: &str) -> Result<u32, ParseError> {
    if digits.is_empty() {
        return err(start, format!("{what} must be a positive integer"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return err(
            start,
            format!("{what} must be written without leading zeros, got {digits:?}"),
        );
    }
    match digits.parse::<u32>() {
        Ok(0) => err(start, format!("{what} must be positive, got 0")),
        Ok(n) => Ok(n),
        Err(_) => err(
            start,
            format!("{what} {digits} is too large (at most {})", u32::MAX),
        ),
    }
}

/// A positive integer that fits u32, spelled as `syntax` allows: v3 has one spelling (no
/// leading zeros); v1 is read as flavor-name-check.py reads it, with Python's `int()`, so "02"
/// is 2 there.
fn positive_in(syntax: Syntax, start: usize, digits: &str, what: &str) -> Result<u32, ParseError> {
    match syntax {
        Syntax::V3 => positive(start, digits, what),
        Syntax::V1 => {
            let significant = digits.trim_start_matches('0');
            let digits = if significant.is_empty() && !digits.is_empty() {
                "0"
            } else {
                significant
            };
            positive(start, digits, what)
        }
    }
}

/// v1 RAM as halves of a GiB, read as flavor-name-check.py reads it: Python's `float()` of the
/// digits and dots, which must be positive and a multiple of 0.5. That takes "4.", ".5", "4.0"
/// and "04". `text` holds only digits and dots, where Rust's `f64` parser follows the same
/// decimal grammar and the same rounding as Python's `float()`.
fn ram_halves_as_float(text: &str) -> Option<u32> {
    let halves = text.parse::<f64>().ok()? * 2.0;
    let whole = halves > 0.0 && halves.fract() == 0.0 && halves <= f64::from(u32::MAX);
    whole.then_some(halves as u32)
}

/// RAM as halves of a GiB: "4" → 8, "3.5" → 7. Only `N` and `N.5` are canonical.
fn ram_halves(text: &str) -> Option<u32> {
    let (whole, half) = match text.split_once('.') {
        None => (text, 0),
        Some((whole, "5")) => (whole, 1),
        Some(_) => return None,
    };
    if whole.is_empty() || (whole.len() > 1 && whole.starts_with('0')) {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let halves = whole.checked_mul(2)?.checked_add(half)?;
    (halves > 0).then_some(halves)
}

/// Why the character after the CPU count is not a CPU type letter.
fn cpu_type_rule(letter: Option<u8>) -> String {
    match letter {
        Some(b'i') => "the CPU type letter comes before the insecure suffix i (e.g. 2Ti)".into(),
        Some(c) if CpuType::from_letter(c.to_ascii_uppercase() as char).is_some() => {
            format!(
                "CPU type letters are upper case: L, V, T, C, got {:?}",
                c as char
            )
        }
        other => format!(
            "CPU type must be one of L (crowded-core), V (shared-core), T (dedicated-thread), C (dedicated-core), got {}",
            describe(other)
        ),
    }
}

fn describe(c: Option<u8>) -> String {
    match c {
        Some(c) => format!("{:?}", c as char),
        None => "the end of the name".into(),
    }
}

//! The parser: one pass over the name, every rejection with the character position (0-based,
//! counted in characters) and the rule it breaks. Names are ASCII; anything else is rejected
//! before parsing, so byte and character positions agree below.

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
        main: if syntax == Syntax::V1 { b':' } else { b'-' },
        ext: if syntax == Syntax::V1 { b'-' } else { b'_' },
    };
    let spec = p.flavor()?;
    let mut warnings = Vec::new();
    if syntax == Syntax::V1 {
        warnings.push(format!(
            "v1 syntax is deprecated (':' and '-' became '-' and '_'); the v3 name is {}",
            spec.name()
        ));
    }
    Ok(Parsed {
        spec,
        syntax,
        warnings,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Separator inside the main part (and inside the GPU extension).
    main: u8,
    /// Separator before each extension.
    ext: u8,
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
        let cpus = positive(start, digits, "CPU count")?;
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
        let half = ram_halves(text).ok_or_else(|| ParseError {
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
            let count = positive(start, digits, "disk count")?;
            if count == 1 {
                return err(start, "one disk is written without \"1x\"");
            }
            // Each disk becomes an extra_specs entry (and later a volume): bound the work.
            if count > MAX_DISKS {
                return err(
                    start,
                    format!("disk count must be at most {MAX_DISKS}, got {count}"),
                );
            }
            let (s, d) = self.digits();
            (count, s, d)
        } else {
            (1, start, digits)
        };
        let size_gb = if size_digits.is_empty() {
            None
        } else {
            Some(positive(size_start, size_digits, "disk size (GB)")?)
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
            while self.peek().is_some_and(|c| c != self.ext) {
                self.pos += 1;
            }
            let token = self.text(start, self.pos);
            let stage = classify(token).ok_or_else(|| ParseError {
                position: sep_at,
                rule: format!(
                    "unknown extension \"{}{token}\" (known: hypervisor kvm/chy/xen/vmw/hyv/bms, hwv, CPU brand i/z/a/r, GPU G/g, ib)",
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
                0 => spec.hypervisor = Hypervisor::ALL.into_iter().find(|h| h.code() == token),
                1 => spec.hwv = true,
                2 => spec.cpu_brand = Some(brand(start, token)?),
                3 => spec.gpu = Some(gpu(start, token, self.main)?),
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

fn brand(start: usize, token: &str) -> Result<CpuBrand, ParseError> {
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
        let value = gen_text
            .parse::<usize>()
            .ok()
            .filter(|g| *g <= max && (gen_text == "0" || !gen_text.starts_with('0')));
        match value {
            Some(g) => Some(g as u8),
            None => {
                return err(
                    start + 1,
                    format!(
                        "{} generation must be 0-{max} without leading zeros, got {gen_text:?}",
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

fn gpu(start: usize, token: &str, sep: u8) -> Result<Gpu, ParseError> {
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
    let gen_text = &token[2..i];
    let generation = if gen_text.is_empty() {
        None
    } else {
        let found = vendor
            .generations()
            .iter()
            .find(|(code, _)| *code == gen_text);
        match found {
            Some((code, _)) => Some(*code),
            None => {
                let known: Vec<&str> = vendor.generations().iter().map(|(c, _)| *c).collect();
                return err(
                    start + 2,
                    format!(
                        "unknown {} GPU generation {gen_text:?} (known: {})",
                        vendor.word(),
                        known.join(", ")
                    ),
                );
            }
        }
    };
    let mut compute_units = None;
    let mut vram_gib = None;
    let count_h = |i: &mut usize| {
        let from = *i;
        while *i < b.len() && b[*i] == b'h' {
            *i += 1;
        }
        *i - from
    };
    let number = |i: &mut usize, what: &str| -> Result<u32, ParseError> {
        let from = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        positive(start + from, &token[from..*i], what)
    };
    let mut high_freq = 0;
    let mut hbm = 0;
    if i < b.len() && b[i] == sep {
        i += 1;
        compute_units = Some(number(&mut i, "GPU compute unit count")?);
        high_freq = count_h(&mut i);
        if high_freq > 2 {
            return err(start + i - 1, "GPU h levels are h or hh");
        }
        if i < b.len() && b[i] == sep {
            i += 1;
            vram_gib = Some(number(&mut i, "GPU VRAM (GiB)")?);
            hbm = count_h(&mut i);
            if hbm > 2 {
                return err(start + i - 1, "GPU h levels are h or hh");
            }
        }
    } else if i < b.len() && b[i] == b'h' {
        return err(
            start + i,
            "GPU h levels follow the compute unit count (e.g. GNa-64h)",
        );
    }
    if i < b.len() {
        return err(
            start + i,
            format!("unexpected {} in the GPU extension", describe(Some(b[i]))),
        );
    }
    Ok(Gpu {
        kind,
        vendor,
        generation,
        compute_units,
        high_freq_level: high_freq as u8,
        vram_gib,
        hbm_level: hbm as u8,
    })
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

//! Hostile tar.zst archives built from structured fuzz input, so the fuzzer spends its time on
//! what the unpacker decides (names, links, types, sizes, metadata headers, the zstd frame)
//! instead of on getting a checksum or a compressed block right.
//!
//! Headers are written byte by byte: `tar::Builder` refuses the very names worth trying.

use std::io::Write;
use std::path::Path;

use arbitrary::Arbitrary;

const BLOCK: usize = 512;
/// Names the parts of generated paths are drawn from; `shoal.toml` is what a node reads next.
const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "shoal.toml",
    "index.html",
    ".",
    "..",
    "",
    "d/e",
];
/// File contents are a repeated byte, up to this many (past the fuzz limits: a small input can
/// still be a decompression bomb).
const MAX_GENERATED_FILE_BYTES: usize = 2 * 1024 * 1024;

/// A whole upload: entries, how the tar ends, how it is compressed.
#[derive(Arbitrary, Debug)]
pub struct HostileArchive {
    entries: Vec<HostileEntry>,
    ending: Ending,
    compression: Compression,
}

#[derive(Arbitrary, Debug)]
struct HostileEntry {
    name: Name,
    name_encoding: NameEncoding,
    kind: Kind,
    mode: u32,
}

/// A path as the archive spells it.
#[derive(Arbitrary, Debug)]
enum Name {
    /// Parts joined by `/`.
    Relative(Vec<Part>),
    /// The sandbox's absolute path, then parts: where an unchecked absolute name would land.
    IntoSandbox(Vec<Part>),
    /// Anything at all.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Part {
    Known(u8),
    Up,
    Long(u16),
    Odd(OddPart),
}

#[derive(Arbitrary, Debug)]
enum OddPart {
    Nul,
    Backslash,
    Drive,
    Newline,
    TrailingSlash,
}

/// Where the name goes: the 100-byte name field, split across ustar's prefix and name fields,
/// a GNU long-name entry, or a pax `path` record.
#[derive(Arbitrary, Debug)]
enum NameEncoding {
    Field,
    UstarPrefix,
    GnuLong,
    Pax,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File {
        len: u32,
        fill: u8,
        /// A size field that differs from the data that follows.
        declared: Option<u64>,
    },
    Dir,
    Symlink(Name, NameEncoding),
    HardLink(Name, NameEncoding),
    /// Devices, FIFOs, sparse files, metadata headers out of place and unknown types.
    TypeByte(u8),
    /// A pax header with arbitrary records (`size`, `GNU.sparse.*`, malformed lines).
    PaxRecords(Vec<(u8, Vec<u8>)>),
}

#[derive(Arbitrary, Debug)]
enum Ending {
    TwoZeroBlocks,
    None,
    /// The tar stream cut short by this many bytes.
    Cut(u16),
    /// Garbage after the end marker.
    Trailing(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Compression {
    Level(i8),
    /// A frame declaring a window larger than the node accepts.
    WideWindow,
    /// Two frames, split at this fraction (of 256) of the tar.
    TwoFrames(u8),
    /// The compressed bytes cut short.
    Truncated(u16),
    /// A skippable frame first, which zstd readers must step over.
    SkippableFirst,
}

impl HostileArchive {
    /// The tar.zst upload; `sandbox` is where absolute names and link targets point.
    pub fn build(&self, sandbox: &Path) -> Vec<u8> {
        let mut tar = Vec::new();
        for entry in &self.entries {
            entry.write(&mut tar, sandbox);
        }
        match &self.ending {
            Ending::TwoZeroBlocks => tar.extend_from_slice(&[0; 2 * BLOCK]),
            Ending::None => {}
            Ending::Cut(cut) => tar.truncate(tar.len().saturating_sub(usize::from(*cut))),
            Ending::Trailing(bytes) => {
                tar.extend_from_slice(&[0; 2 * BLOCK]);
                tar.extend_from_slice(bytes);
            }
        }
        self.compression.compress(&tar)
    }
}

impl Name {
    fn bytes(&self, sandbox: &Path) -> Vec<u8> {
        let parts = match self {
            Name::Raw(bytes) => return bytes.clone(),
            Name::Relative(parts) => parts,
            Name::IntoSandbox(parts) => {
                let mut name = sandbox.as_os_str().as_encoded_bytes().to_vec();
                for part in parts {
                    name.push(b'/');
                    part.append(&mut name);
                }
                return name;
            }
        };
        let mut name = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                name.push(b'/');
            }
            part.append(&mut name);
        }
        name
    }
}

impl Part {
    fn append(&self, name: &mut Vec<u8>) {
        match self {
            Part::Known(index) => {
                name.extend_from_slice(NAMES[usize::from(*index) % NAMES.len()].as_bytes())
            }
            Part::Up => name.extend_from_slice(b".."),
            Part::Long(len) => name.extend(std::iter::repeat_n(b'x', usize::from(*len) % 4200)),
            Part::Odd(OddPart::Nul) => name.extend_from_slice(b"a\0b"),
            Part::Odd(OddPart::Backslash) => name.extend_from_slice(b"..\\a"),
            Part::Odd(OddPart::Drive) => name.extend_from_slice(b"C:"),
            Part::Odd(OddPart::Newline) => name.extend_from_slice(b"a\nb\x1b[31m"),
            Part::Odd(OddPart::TrailingSlash) => name.push(b'/'),
        }
    }
}

impl HostileEntry {
    fn write(&self, tar: &mut Vec<u8>, sandbox: &Path) {
        let name = self.name.bytes(sandbox);
        let mut header = tar::Header::new_gnu();
        header.set_mode(self.mode);
        let (type_byte, data, declared) = match &self.kind {
            Kind::File {
                len,
                fill,
                declared,
            } => {
                let len = *len as usize % (MAX_GENERATED_FILE_BYTES + 1);
                let data = vec![*fill; len];
                (b'0', data, declared.unwrap_or(len as u64))
            }
            Kind::Dir => (b'5', Vec::new(), 0),
            Kind::Symlink(target, encoding) | Kind::HardLink(target, encoding) => {
                let target = target.bytes(sandbox);
                write_link_name(tar, &mut header, &target, encoding);
                let type_byte = if matches!(self.kind, Kind::Symlink(..)) {
                    b'2'
                } else {
                    b'1'
                };
                (type_byte, Vec::new(), 0)
            }
            Kind::TypeByte(byte) => (*byte, Vec::new(), 0),
            Kind::PaxRecords(records) => {
                let mut data = Vec::new();
                for (key, value) in records {
                    let key = ["size", "path", "linkpath", "GNU.sparse.map", "mtime"]
                        [usize::from(*key) % 5];
                    pax_record(&mut data, key, value);
                }
                (b'x', data, 0)
            }
        };
        write_name(tar, &mut header, &name, &self.name_encoding);
        header.as_mut_bytes()[156] = type_byte;
        header.set_size(declared);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        append_data(tar, &data);
    }
}

fn write_name(tar: &mut Vec<u8>, header: &mut tar::Header, name: &[u8], how: &NameEncoding) {
    let bytes = header.as_mut_bytes();
    match how {
        NameEncoding::Field => copy_field(&mut bytes[..100], name),
        NameEncoding::UstarPrefix => {
            // ustar magic, so readers join prefix and name.
            bytes[257..265].copy_from_slice(b"ustar\x0000");
            let split = name.len().saturating_sub(100).min(155);
            copy_field(&mut bytes[345..500], &name[..split]);
            copy_field(&mut bytes[..100], &name[split..]);
        }
        NameEncoding::GnuLong => {
            metadata_entry(tar, b'L', &[name, b"\0"].concat());
            copy_field(&mut bytes[..100], b"././@LongLink");
        }
        NameEncoding::Pax => {
            let mut records = Vec::new();
            pax_record(&mut records, "path", name);
            metadata_entry(tar, b'x', &records);
            copy_field(&mut bytes[..100], b"pax-name");
        }
    }
}

fn write_link_name(tar: &mut Vec<u8>, header: &mut tar::Header, target: &[u8], how: &NameEncoding) {
    let bytes = header.as_mut_bytes();
    match how {
        NameEncoding::Field | NameEncoding::UstarPrefix => copy_field(&mut bytes[157..257], target),
        NameEncoding::GnuLong => metadata_entry(tar, b'K', &[target, b"\0"].concat()),
        NameEncoding::Pax => {
            let mut records = Vec::new();
            pax_record(&mut records, "linkpath", target);
            metadata_entry(tar, b'x', &records);
        }
    }
}

fn copy_field(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
}

fn metadata_entry(tar: &mut Vec<u8>, type_byte: u8, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    copy_field(&mut header.as_mut_bytes()[..100], b"././@LongLink");
    header.as_mut_bytes()[156] = type_byte;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    append_data(tar, data);
}

/// A pax record: `<length> <key>=<value>\n`, where the length counts itself.
fn pax_record(records: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    records.extend_from_slice(format!("{len} {key}=").as_bytes());
    records.extend_from_slice(value);
    records.push(b'\n');
}

fn append_data(tar: &mut Vec<u8>, data: &[u8]) {
    tar.extend_from_slice(data);
    tar.resize(tar.len().next_multiple_of(BLOCK), 0);
}

impl Compression {
    fn compress(&self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Level(level) => {
                zstd::bulk::compress(tar, i32::from(*level).clamp(-5, 3)).expect("zstd compresses")
            }
            Compression::WideWindow => {
                let mut encoder = zstd::Encoder::new(Vec::new(), 1).expect("zstd encoder");
                encoder.window_log(28).expect("window log 28 is valid");
                encoder.long_distance_matching(true).expect("ldm");
                encoder.write_all(tar).expect("writes to a Vec");
                encoder.finish().expect("zstd finishes")
            }
            Compression::TwoFrames(at) => {
                let split = tar.len() * usize::from(*at) / 256;
                let mut out = zstd::bulk::compress(&tar[..split], 1).expect("zstd compresses");
                out.extend(zstd::bulk::compress(&tar[split..], 1).expect("zstd compresses"));
                out
            }
            Compression::Truncated(cut) => {
                let mut out = zstd::bulk::compress(tar, 1).expect("zstd compresses");
                out.truncate(out.len().saturating_sub(usize::from(*cut) % 64 + 1));
                out
            }
            Compression::SkippableFirst => {
                let mut out = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
                out.extend(zstd::bulk::compress(tar, 1).expect("zstd compresses"));
                out
            }
        }
    }
}

//! Raw BTF to [`Type`]s: the header, then one reader per kind. Every read
//! is bounds-checked; an unknown kind is an error (its size is unknown, so
//! nothing after it could be read).

use super::{BtfError, Member, Type};

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (BTF_KIND_*).
mod k {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, BtfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Truncated("header"))
}

fn u32_at(b: &[u8], off: usize, what: &'static str) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(what))
}

/// The type section, read in order.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u32(&mut self, what: &'static str) -> Result<u32, BtfError> {
        let v = u32_at(self.b, self.pos, what)?;
        self.pos += 4;
        Ok(v)
    }

    fn skip(&mut self, n: usize) {
        self.pos += n;
    }
}

/// One type's common header (`struct btf_type`).
struct Head {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kflag: bool,
    size_or_type: u32,
}

/// The types (index 0 is `void`) and the string section of BTF `b`.
pub(super) fn types(b: &[u8]) -> Result<(Vec<Type>, Vec<u8>), BtfError> {
    let magic = u16_at(b, 0)?;
    if magic != MAGIC {
        return Err(BtfError::BadMagic(magic));
    }
    let hdr_len = u32_at(b, 4, "header")? as usize;
    let type_off = u32_at(b, 8, "header")? as usize;
    let type_len = u32_at(b, 12, "header")? as usize;
    let str_off = u32_at(b, 16, "header")? as usize;
    let str_len = u32_at(b, 20, "header")? as usize;
    let section = |off: usize, len: usize, what| {
        hdr_len
            .checked_add(off)
            .and_then(|s| Some((s, s.checked_add(len)?)))
            .and_then(|(s, e)| b.get(s..e))
            .ok_or(BtfError::Truncated(what))
    };
    let tb = section(type_off, type_len, "type section")?;
    let strings = section(str_off, str_len, "string section")?;
    let mut types = vec![Type::Other];
    let mut c = Cursor { b: tb, pos: 0 };
    while c.pos < tb.len() {
        let id = types.len() as u32;
        let name_off = c.u32("type")?;
        let info = c.u32("type")?;
        let h = Head {
            name_off,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kflag: info >> 31 == 1,
            size_or_type: c.u32("type")?,
        };
        types.push(one(&mut c, &h, strings).map_err(|e| match e {
            BtfError::UnknownKind { kind, .. } => BtfError::UnknownKind { id, kind },
            e => e,
        })?);
    }
    if c.pos != tb.len() {
        return Err(BtfError::Truncated("last type"));
    }
    Ok((types, strings.to_vec()))
}

/// The type after header `h`, by its kind.
fn one(c: &mut Cursor<'_>, h: &Head, strings: &[u8]) -> Result<Type, BtfError> {
    Ok(match h.kind {
        k::INT => {
            c.skip(4);
            Type::Int {
                size: h.size_or_type,
            }
        }
        k::PTR => Type::Ptr { to: h.size_or_type },
        k::ARRAY => {
            let elem = c.u32("array")?;
            let _index_type = c.u32("array")?;
            let nelems = c.u32("array")?;
            Type::Array { elem, nelems }
        }
        k::STRUCT | k::UNION => Type::Composite {
            name_off: h.name_off,
            size: h.size_or_type,
            members: members(c, h)?,
        },
        k::ENUM | k::ENUM64 => Type::Enum {
            name_off: h.name_off,
            size: h.size_or_type,
            values: enum_values(c, h)?,
        },
        k::FUNC => Type::Func {
            name_off: h.name_off,
            proto: h.size_or_type,
        },
        k::FWD | k::FLOAT => Type::Other,
        k::TYPEDEF | k::VOLATILE | k::CONST | k::RESTRICT | k::TYPE_TAG => Type::Alias {
            name_off: h.name_off,
            ty: h.size_or_type,
            typedef: h.kind == k::TYPEDEF,
        },
        k::FUNC_PROTO => func_proto(c, h, strings)?,
        k::VAR | k::DECL_TAG => {
            c.skip(4);
            Type::Other
        }
        k::DATASEC => {
            c.skip(12 * h.vlen);
            Type::Other
        }
        kind => return Err(BtfError::UnknownKind { id: 0, kind }),
    })
}

/// `struct btf_member`s; with kflag, the offset word holds a bitfield's size.
fn members(c: &mut Cursor<'_>, h: &Head) -> Result<Vec<Member>, BtfError> {
    let mut members = Vec::with_capacity(h.vlen);
    for _ in 0..h.vlen {
        let name_off = c.u32("member")?;
        let ty = c.u32("member")?;
        let off = c.u32("member")?;
        let (bit_offset, bitfield_size) = if h.kflag {
            (off & 0x00ff_ffff, off >> 24)
        } else {
            (off, 0)
        };
        members.push(Member {
            name_off,
            ty,
            bit_offset,
            bitfield_size,
        });
    }
    Ok(members)
}

/// `struct btf_enum` (kflag: signed) or `struct btf_enum64`.
fn enum_values(c: &mut Cursor<'_>, h: &Head) -> Result<Vec<(u32, i64)>, BtfError> {
    let mut values = Vec::with_capacity(h.vlen);
    for _ in 0..h.vlen {
        let n = c.u32("enum")?;
        let v = if h.kind == k::ENUM64 {
            let lo = c.u32("enum64")? as u64;
            let hi = c.u32("enum64")? as u64;
            (hi << 32 | lo) as i64
        } else {
            let v = c.u32("enum")?;
            if h.kflag {
                v as i32 as i64
            } else {
                v as i64
            }
        };
        values.push((n, v));
    }
    Ok(values)
}

/// `struct btf_param`s: how many, and where one named `reason` sits.
fn func_proto(c: &mut Cursor<'_>, h: &Head, strings: &[u8]) -> Result<Type, BtfError> {
    let mut reason_at = None;
    for i in 0..h.vlen {
        let n = c.u32("parameter")? as usize;
        let _ty = c.u32("parameter")?;
        if strings.get(n..n + 7) == Some(b"reason\0".as_slice()) {
            reason_at = u8::try_from(i).ok();
        }
    }
    Ok(Type::FuncProto {
        params: h.vlen as u32,
        reason_at,
    })
}

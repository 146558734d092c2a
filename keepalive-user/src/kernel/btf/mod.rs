//! A minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux): just
//! enough to resolve struct member offsets through anonymous unions, read an
//! enum's names, and count a tracepoint's arguments.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

mod parse;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("BTF is truncated: {0}")]
    Truncated(&'static str),
    #[error("not BTF data (magic {0:#06x}, expected 0xeb9f)")]
    BadMagic(u16),
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("the running kernel's BTF has no {0}")]
    NoSuchType(String),
    #[error("the running kernel's `{ty}` has no field `{field}`")]
    NoSuchField { ty: String, field: String },
    #[error("`{ty}.{field}` is a bitfield; kato reads whole fields only")]
    Bitfield { ty: String, field: String },
    #[error("`{ty}.{field}` is not a struct or union, cannot descend into it")]
    NotComposite { ty: String, field: String },
    #[error("BTF nests anonymous members more than {0} deep (corrupt: a struct inside itself?)")]
    TooDeep(u32),
    #[error("BTF type id {0} is out of range")]
    BadTypeId(u32),
}

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Int {
        size: u32,
    },
    Ptr {
        to: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    Composite {
        name_off: u32,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        name_off: u32,
        size: u32,
        values: Vec<(u32, i64)>,
    },
    /// typedef, volatile, const, restrict, type tag: follow `ty`.
    Alias {
        name_off: u32,
        ty: u32,
        typedef: bool,
    },
    FuncProto {
        params: u32,
        /// The position of a parameter named `reason` (an `enum
        /// sk_rst_reason`), which compilers move: Debian's 6.12 built
        /// `tcp_send_active_reset(sk, reason)`, dropping `priority`.
        reason_at: Option<u8>,
    },
    /// A kernel function (what fentry/fexit attach to) and its prototype.
    Func {
        name_off: u32,
        proto: u32,
    },
    Other,
}

/// A program's attach target as aya looks it up in the kernel's BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A kernel function (fentry/fexit) or `bpf_iter_*` (iterators).
    Func(std::borrow::Cow<'a, str>),
    /// `btf_trace_*` (BTF tracepoints).
    Typedef(std::borrow::Cow<'a, str>),
}

/// A struct member resolved to a byte offset from the outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Named structs/unions, typedefs and enums.
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw BTF (`parse.rs` reads each kind).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let (types, strings) = parse::types(b)?;
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() as u32 {
            let (name_off, prefix) = match &btf.types[id as usize] {
                Type::Composite { name_off, .. }
                | Type::Alias {
                    name_off,
                    typedef: true,
                    ..
                } => (*name_off, ""),
                Type::Enum { name_off, .. } => (*name_off, "enum "),
                _ => continue,
            };
            if name_off != 0 {
                let name = format!("{prefix}{}", btf.name(name_off));
                btf.by_name.entry(name).or_default().push(id);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadTypeId(id))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            match self.ty(id)? {
                Type::Alias { ty, .. } => id = *ty,
                _ => return Ok(id),
            }
        }
        Ok(id)
    }

    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        Ok(match self.ty(self.strip(id)?)? {
            Type::Int { size } | Type::Composite { size, .. } | Type::Enum { size, .. } => *size,
            Type::Ptr { .. } => 8,
            Type::Array { elem, nelems } => self.size_of(*elem)? * nelems,
            _ => 0,
        })
    }

    /// The id of `struct NAME` (or union) with a body; kernels have forward
    /// declarations and sometimes empty duplicates, so take the largest.
    fn composite(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&id| match &self.types[id as usize] {
                Type::Composite { size, .. } => Some((id, *size)),
                _ => None,
            })
            .max_by_key(|&(_, size)| size)
            .map(|(id, _)| id)
            .ok_or_else(|| BtfError::NoSuchType(format!("struct {name}")))
    }

    /// Finds `field` in composite `id`, looking through anonymous members.
    /// Returns (bit offset, member).
    fn find_member(&self, id: u32, field: &str) -> Result<Option<(u32, Member)>, BtfError> {
        self.find_member_in(id, field, 0)
    }

    /// Kernels nest anonymous members a few levels deep; a corrupt file can
    /// make a member contain its own struct, so the depth is bounded (found
    /// by cargo fuzz: unbounded, it overflowed the stack).
    fn find_member_in(
        &self,
        id: u32,
        field: &str,
        depth: u32,
    ) -> Result<Option<(u32, Member)>, BtfError> {
        const MAX_ANON_DEPTH: u32 = 16;
        if depth > MAX_ANON_DEPTH {
            return Err(BtfError::TooDeep(MAX_ANON_DEPTH));
        }
        let Type::Composite { members, .. } = self.ty(id)? else {
            return Ok(None);
        };
        for m in members {
            if m.name_off != 0 {
                if self.name(m.name_off) == field {
                    return Ok(Some((m.bit_offset, m.clone())));
                }
            } else if let Some((off, found)) =
                self.find_member_in(self.strip(m.ty)?, field, depth + 1)?
            {
                return Ok(Some((m.bit_offset + off, found)));
            }
        }
        Ok(None)
    }

    /// Byte offset and size of `path` (e.g. `__sk_common.skc_state`) inside
    /// `struct ty`, looking through anonymous structs and unions.
    pub fn field(&self, ty: &str, path: &str) -> Result<Field, BtfError> {
        let mut id = self.composite(ty)?;
        let mut offset_bits = 0u32;
        let mut size = 0;
        let mut parent = ty.to_owned();
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, m) = self
                .find_member(id, part)?
                .ok_or_else(|| BtfError::NoSuchField {
                    ty: format!("struct {ty}"),
                    field: path.to_owned(),
                })?;
            if m.bitfield_size != 0 || off % 8 != 0 {
                return Err(BtfError::Bitfield {
                    ty: parent,
                    field: part.to_owned(),
                });
            }
            offset_bits += off;
            size = self.size_of(m.ty)?;
            if parts.peek().is_some() {
                id = self.strip(m.ty)?;
                if !matches!(self.ty(id)?, Type::Composite { .. }) {
                    return Err(BtfError::NotComposite {
                        ty: parent,
                        field: part.to_owned(),
                    });
                }
            }
            parent = format!("{parent}.{part}");
        }
        Ok(Field {
            offset: offset_bits / 8,
            size,
        })
    }

    /// Names and values of `enum NAME`.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let key = format!("enum {name}");
        let id = self
            .by_name
            .get(&key)
            .and_then(|ids| ids.first())
            .ok_or(BtfError::NoSuchType(key))?;
        match self.ty(*id)? {
            Type::Enum { values, .. } => Ok(values
                .iter()
                .map(|(n, v)| (self.name(*n).to_owned(), *v))
                .collect()),
            _ => Err(BtfError::NoSuchType(format!("enum {name}"))),
        }
    }

    /// The id of the first function named `name`: the one the kernel and
    /// aya take as an fentry/fexit or iterator target.
    fn func(&self, name: &str) -> Option<(u32, u32)> {
        // A scan, not an index: a handful of lookups at start-up, while
        // indexing ~60,000 kernel functions cost the agent megabytes.
        self.types.iter().enumerate().find_map(|(id, t)| match t {
            Type::Func { name_off, proto } if self.name(*name_off) == name => {
                Some((id as u32, *proto))
            }
            _ => None,
        })
    }

    /// The id of the first typedef named `name` (`btf_trace_*`, what a
    /// tp_btf program attaches by).
    fn typedef(&self, name: &str) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| matches!(self.types[id as usize], Type::Alias { typedef: true, .. }))
    }

    /// The kernel's type id of each program attach target, as aya's
    /// `id_by_type_name_kind` finds it: the first of that kind and name.
    /// Functions are found in one scan of the types, all at once.
    pub fn target_ids(&self, targets: &[Target<'_>]) -> Vec<Option<u32>> {
        let mut ids: Vec<Option<u32>> = targets
            .iter()
            .map(|t| match t {
                Target::Typedef(name) => self.typedef(name),
                Target::Func(_) => None,
            })
            .collect();
        let mut funcs: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            if let Target::Func(name) = t {
                funcs.entry(name.as_bytes()).or_default().push(i);
            }
        }
        for (id, t) in self.types.iter().enumerate() {
            if funcs.is_empty() {
                break;
            }
            if let Type::Func { name_off, .. } = t {
                if let Some(at) = funcs.remove(self.name(*name_off).as_bytes()) {
                    for i in at {
                        ids[i] = Some(id as u32);
                    }
                }
            }
        }
        ids
    }

    /// Number of arguments of kernel function `name` (fentry/fexit see
    /// them); an error when the kernel's BTF has no such function (inlined,
    /// renamed or absent), so it cannot be attached to.
    pub fn function_args(&self, name: &str) -> Result<u32, BtfError> {
        self.function_proto(name).map(|(params, _)| params)
    }

    /// The position of function `name`'s parameter named `reason`, where
    /// it has one (the compiler may have dropped others before it).
    pub fn function_reason_arg(&self, name: &str) -> Result<Option<u8>, BtfError> {
        self.function_proto(name).map(|(_, at)| at)
    }

    fn function_proto(&self, name: &str) -> Result<(u32, Option<u8>), BtfError> {
        let missing = || BtfError::NoSuchType(format!("function {name}"));
        let (_, proto) = self.func(name).ok_or_else(missing)?;
        match self.ty(proto)? {
            Type::FuncProto { params, reason_at } => Ok((*params, *reason_at)),
            _ => Err(missing()),
        }
    }

    /// Number of arguments a raw tracepoint passes to BTF programs, from its
    /// `btf_trace_NAME` typedef (the kernel's leading `void *__data` excluded).
    pub fn tracepoint_args(&self, name: &str) -> Result<u32, BtfError> {
        let key = format!("btf_trace_{name}");
        let missing = || BtfError::NoSuchType(format!("tracepoint {name} (typedef {key})"));
        let id = self.typedef(&key).ok_or_else(missing)?;
        let Type::Alias { ty, .. } = self.ty(id)? else {
            return Err(missing());
        };
        let Type::Ptr { to } = self.ty(*ty)? else {
            return Err(missing());
        };
        match self.ty(*to)? {
            Type::FuncProto { params, .. } => Ok(params.saturating_sub(1)),
            _ => Err(missing()),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture;

#[cfg(test)]
mod tests {
    use super::{fixture, *};

    fn btf() -> Btf {
        Btf::parse(&fixture::kernel_like()).expect("fixture parses")
    }

    #[test]
    fn direct_member() {
        assert_eq!(
            btf().field("sock", "sk_timer").unwrap(),
            Field {
                offset: 512,
                size: 40
            }
        );
        assert_eq!(
            btf().field("timer_list", "function").unwrap(),
            Field {
                offset: 24,
                size: 8
            }
        );
    }

    #[test]
    fn through_anonymous_unions_and_structs() {
        let b = btf();
        assert_eq!(
            b.field("sock_common", "skc_rcv_saddr").unwrap(),
            Field { offset: 4, size: 4 }
        );
        assert_eq!(
            b.field("sock_common", "skc_num").unwrap(),
            Field {
                offset: 14,
                size: 2
            }
        );
        assert_eq!(
            b.field("sock", "__sk_common.skc_dport").unwrap(),
            Field {
                offset: 12,
                size: 2
            }
        );
    }

    #[test]
    fn nested_path_through_typedef_and_volatile() {
        let b = btf();
        assert_eq!(
            b.field("sock", "__sk_common.skc_state").unwrap(),
            Field {
                offset: 18,
                size: 1
            }
        );
        assert_eq!(
            b.field("sock", "__sk_common.skc_net.net").unwrap(),
            Field {
                offset: 48,
                size: 8
            }
        );
        assert_eq!(
            b.field("sock", "sk_timer.entry.pprev").unwrap(),
            Field {
                offset: 520,
                size: 8
            }
        );
        assert_eq!(
            b.field("sock", "__sk_common.skc_v6_daddr").unwrap(),
            Field {
                offset: 56,
                size: 16
            }
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = btf().field("sock", "sk_nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the running kernel's `struct sock` has no field `sk_nope`"
        );
        let err = btf().field("tcp_sk", "keepalive_time").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the running kernel's BTF has no struct tcp_sk"
        );
        let err = btf().field("tcp_sock", "keepalive_time").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the running kernel's `struct tcp_sock` has no field `keepalive_time`"
        );
    }

    #[test]
    fn bitfields_and_scalars_refused() {
        assert!(matches!(
            btf().field("sock_common", "skc_reuse"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf().field("sock", "sk_err.x"),
            Err(BtfError::NotComposite { .. })
        ));
    }

    /// cargo fuzz's find: an anonymous member whose type is its own struct
    /// recursed until the stack overflowed. Now an error naming the problem.
    #[test]
    fn self_containing_anonymous_member_is_an_error() {
        let mut b = fixture::Builder::new();
        let me = b.next_id();
        b.composite("sock", false, 8, &[("", me, 0, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        let e = btf.field("sock", "sk_timer").unwrap_err();
        assert!(matches!(e, BtfError::TooDeep(_)), "{e}");
    }

    #[test]
    fn enum_and_tracepoint_args() {
        let b = btf();
        let v = b.enum_values("sk_rst_reason").unwrap();
        assert_eq!(v[1], ("SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT".to_owned(), 15));
        assert_eq!(b.tracepoint_args("tcp_send_reset").unwrap(), 3);
        assert!(b.tracepoint_args("nope").is_err());
        // Functions (fentry targets) are found by name, with their arity.
        assert_eq!(b.function_args("tcp_keepalive_timer").unwrap(), 1);
        assert_eq!(b.function_args("tcp_send_active_reset").unwrap(), 2);
        assert_eq!(
            b.function_reason_arg("tcp_send_active_reset").unwrap(),
            Some(1)
        );
        let e = b
            .function_args("inet_csk_reset_keepalive_timer")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inet_csk_reset_keepalive_timer"), "{e}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = fixture::kernel_like();
        assert!(matches!(Btf::parse(&[0x9f]), Err(BtfError::Truncated(_))));
        assert!(matches!(
            Btf::parse(&[0, 0, 1, 0]),
            Err(BtfError::BadMagic(0))
        ));
        for cut in [10, 24, 100, good.len() / 2, good.len() - 1] {
            assert!(Btf::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_kind = good.clone();
        bad_kind[24 + 7] = 30; // first type's kind byte
        assert!(matches!(
            Btf::parse(&bad_kind),
            Err(BtfError::UnknownKind { id: 1, kind: 30 })
        ));
    }
}

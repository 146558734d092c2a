//! Opt-in: request/response turns per TCP connection, from every
//! send/recv syscall (`sock:sock_send_length`, `sock:sock_recv_length`).
//! A turn is a change of direction: a server's response after a request
//! (in -> out), a client's answer after a request (out -> in). Reported,
//! and forgotten, when the socket closes. Attached only with the HTTP
//! keep-alive view on: it runs on every socket syscall.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};
use keepalive_common::Turns;

use crate::sock::{in_watched_netns, protocol_direct};

const IN: u32 = 1;
const OUT: u32 = 2;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;

/// Least recently used connections are forgotten first when it is full.
#[map]
static CONN: LruHashMap<u64, Turns> = LruHashMap::with_max_entries(65_536, 0);

#[inline(always)]
fn note(ctx: &BtfTracePointContext, dir: u32) -> Result<u32, u32> {
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || (dir == IN && flags & MSG_PEEK != 0) {
        return Ok(0);
    }
    let sk: u64 = ctx.arg(0);
    // Plain loads through the BTF `struct sock *`; other namespaces' sockets
    // never enter the map (their closes would not be the ones that clear it).
    if sk == 0 || protocol_direct(sk) != IPPROTO_TCP || !in_watched_netns(sk) {
        return Ok(0);
    }
    match CONN.get_ptr_mut(sk) {
        Some(t) => unsafe {
            if (*t).last_dir != dir {
                if dir == OUT {
                    (*t).turns_out += 1;
                } else {
                    (*t).turns_in += 1;
                }
                (*t).last_dir = dir;
            }
        },
        None => {
            // The first data of a connection is not a turn.
            let t = Turns {
                last_dir: dir,
                ..Turns::default()
            };
            let _ = CONN.insert(sk, t, 0);
        }
    }
    Ok(0)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    match note(&ctx, OUT) {
        Ok(r) | Err(r) => r,
    }
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    match note(&ctx, IN) {
        Ok(r) | Err(r) => r,
    }
}

/// The closing socket's turns (out, in), forgotten.
#[inline(always)]
pub fn take(sk: u64) -> (u32, u32) {
    match unsafe { CONN.get(sk) } {
        Some(t) => {
            let turns = (t.turns_out, t.turns_in);
            let _ = CONN.remove(sk);
            turns
        }
        None => (0, 0),
    }
}

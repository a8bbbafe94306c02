//! The fleet's records in Redis: the bulk load of `setup` (pipelined: ten
//! thousand `dyncert put` processes would take minutes) and the
//! replace-and-publish of a renewal.
//!
//! `--redis` is one node: a single server, the Sentinel primary, or any
//! node of a Cluster. A Cluster node answers a key it does not own with
//! `MOVED <slot> <ip:port>`; the writes here follow it to the owner, so the
//! script needs no slot map (a `PUBLISH` on any node reaches the
//! subscribers of every node).

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use dyncert_testkit::{
    encode_command, read_reply, serial_hex, LeafPem, Pki, Reply, DEFAULT_PREFIX,
};

use super::{name_of, usage, Flags};

/// The module's default invalidation channel.
pub const CHANNEL: &str = "dyncert:invalidate";

/// A RESP connection to the fleet's Redis.
pub struct Resp {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> Result<Resp, String> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Ok(Resp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        })
    }

    /// Sends all commands at once, then reads every reply, error replies
    /// included.
    fn send_all(&mut self, cmds: &[&[u8]]) -> Result<Vec<Reply>, String> {
        let mut buf = Vec::new();
        for c in cmds {
            buf.extend_from_slice(c);
        }
        self.writer
            .write_all(&buf)
            .map_err(|e| format!("write: {e}"))?;
        cmds.iter()
            .map(|_| read_reply(&mut self.reader).map_err(|e| format!("read: {e}")))
            .collect()
    }

    /// Sends all commands at once, then reads every reply: an error reply
    /// fails the whole batch.
    pub fn pipeline(&mut self, cmds: &[Vec<u8>]) -> Result<Vec<Reply>, String> {
        let refs: Vec<&[u8]> = cmds.iter().map(Vec::as_slice).collect();
        self.send_all(&refs)?
            .into_iter()
            .map(|r| match r {
                Reply::Error(e) => Err(format!("redis: {e}")),
                r => Ok(r),
            })
            .collect()
    }

    /// One write, sent again to the Cluster node that owns its key when
    /// this one answers `MOVED`; the connection then stays on that node.
    pub fn write(&mut self, cmd: Vec<u8>) -> Result<Reply, String> {
        let r = self.send_all(&[&cmd])?.remove(0);
        match moved_to(&r) {
            Some(addr) => {
                *self = Resp::connect(addr)?;
                self.pipeline(&[cmd]).map(|mut v| v.remove(0))
            }
            None => match r {
                Reply::Error(e) => Err(format!("redis: {e}")),
                r => Ok(r),
            },
        }
    }
}

/// The owner named by a Cluster's `MOVED <slot> <ip:port>` answer.
fn moved_to(r: &Reply) -> Option<SocketAddr> {
    let Reply::Error(e) = r else { return None };
    e.strip_prefix("MOVED ")?.split(' ').nth(1)?.parse().ok()
}

/// Writes `cmds` through `seed`; those a Cluster node answers with
/// `MOVED` go again, pipelined, to their owners (one connection each,
/// kept in `owners`).
fn write_batch(
    seed: &mut Resp,
    owners: &mut HashMap<SocketAddr, Resp>,
    cmds: &[Vec<u8>],
) -> Result<(), String> {
    let refs: Vec<&[u8]> = cmds.iter().map(Vec::as_slice).collect();
    let mut moved: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    for (cmd, r) in cmds.iter().zip(seed.send_all(&refs)?) {
        match (moved_to(&r), r) {
            (Some(addr), _) => moved.entry(addr).or_default().push(cmd.clone()),
            (None, Reply::Error(e)) => return Err(format!("redis: {e}")),
            _ => {}
        }
    }
    for (addr, cmds) in moved {
        let conn = match owners.entry(addr) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Resp::connect(addr)?),
        };
        conn.pipeline(&cmds)?;
    }
    Ok(())
}

fn hset(leaf: &LeafPem, pki: &Pki) -> Vec<u8> {
    let key = format!("{DEFAULT_PREFIX}{}", leaf.name);
    encode_command(&[
        "HSET",
        &key,
        "crt",
        &leaf.chain_pem(pki),
        "key",
        &leaf.key_pem,
    ])
}

/// `setup`: the default certificate for the terminators, and the
/// records of both pools in Redis.
pub fn setup(f: &Flags) -> i32 {
    let redis = f.addr("redis");
    let names: usize = f.num("names", 10_000);
    let cold: usize = f.num("cold", 0);
    let certs = Path::new(f.req("certs"));
    let started = Instant::now();
    let pki = Pki::new();
    std::fs::create_dir_all(certs).expect("certificate directory");
    pki.write_default(certs);
    let all: Vec<String> = (0..names)
        .map(|i| name_of("n", i))
        .chain((0..cold).map(|i| name_of("c", i)))
        .collect();
    let total = all.len();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let leaves = pki.leaves_pem(all, 1, threads);
    let generated = started.elapsed();
    let mut conn = match Resp::connect(redis) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet setup: {e}");
            return 1;
        }
    };
    let mut owners = HashMap::new();
    for chunk in leaves.chunks(1000) {
        let cmds: Vec<Vec<u8>> = chunk.iter().map(|l| hset(l, &pki)).collect();
        if let Err(e) = write_batch(&mut conn, &mut owners, &cmds) {
            eprintln!("fleet setup: loading records: {e}");
            return 1;
        }
    }
    println!(
        "records={total} generated_s={:.1} loaded_s={:.1}",
        generated.as_secs_f64(),
        (started.elapsed() - generated).as_secs_f64()
    );
    0
}

/// Writes a fresh certificate for `name` (serial `serial`) and publishes
/// the name, as `dyncert put` does: the record first, then the message.
/// Returns the new serial in hex and when the PUBLISH was sent.
pub fn publish(
    conn: &mut Resp,
    pki: &Pki,
    name: &str,
    serial: u64,
    channel: &str,
) -> Result<(String, Instant), String> {
    let leaf = pki.leaf_pem(name.to_owned(), serial);
    conn.write(hset(&leaf, pki))?;
    let at = Instant::now();
    conn.write(encode_command(&["PUBLISH", channel, name]))?;
    Ok((serial_hex(serial), at))
}

/// `publish`: one renewal, for the script's partition scenario.
pub fn publish_cmd(f: &Flags) -> i32 {
    let name = f.req("name");
    let serial: u64 = f.num("serial", 0);
    if serial == 0 {
        usage("--serial must be a positive number")
    }
    let channel = f.opt("channel").unwrap_or(CHANNEL);
    let r = Resp::connect(f.addr("redis"))
        .and_then(|mut c| publish(&mut c, &Pki::new(), name, serial, channel));
    match r {
        Ok((hex, _)) => {
            println!("serial={hex}");
            0
        }
        Err(e) => {
            eprintln!("fleet publish: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_answers_name_the_owner() {
        let r = Reply::Error("MOVED 3999 10.77.0.21:7000".into());
        assert_eq!(moved_to(&r), Some("10.77.0.21:7000".parse().unwrap()));
        assert_eq!(moved_to(&Reply::Error("ERR wrong type".into())), None);
        assert_eq!(moved_to(&Reply::Int(1)), None);
    }
}

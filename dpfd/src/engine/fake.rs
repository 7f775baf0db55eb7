//! Fake mirror file and kernel for engine tests: both write into one shared
//! `World` and append to one log, so a test sees the exact order in which
//! the representations were written, and can make either side fail.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use proto::dpf::Message;
use proto::Proto;

use super::{Engine, Kernel, Mirror, Reply};
use crate::handler::Refusals;
use crate::mirror::{compacted, replay, Op, Record, Replay};
use crate::nft::{ElemOp, Elements, Listing};
use crate::table::Forward;
use crate::table::Table;
use crate::values::PortRange;

#[derive(Default)]
pub struct World {
    /// Every write, in order: "mirror add tcp PUB", "mirror fsync",
    /// "kernel add tcp PUB", "kernel del tcp PUB", "kernel install N", ...
    pub log: Vec<String>,
    /// The durable bytes of the mirror file.
    pub mirror_bytes: Vec<u8>,
    pub kernel: Elements,
    /// Our table, maps, chains and rules exist in the kernel.
    pub kernel_structure: bool,
    pub fail_mirror: bool,
    /// How many of the next kernel writes fail.
    pub fail_kernel: u32,
}

pub type Shared = Rc<RefCell<World>>;

pub struct FakeMirror {
    pub world: Shared,
    pending: Vec<Record>,
}

pub struct FakeKernel {
    pub world: Shared,
}

pub fn world() -> Shared {
    Rc::new(RefCell::new(World {
        kernel_structure: true,
        ..World::default()
    }))
}

pub fn backends(world: &Shared) -> (FakeMirror, FakeKernel) {
    (
        FakeMirror {
            world: world.clone(),
            pending: Vec::new(),
        },
        FakeKernel {
            world: world.clone(),
        },
    )
}

impl Mirror for FakeMirror {
    fn append(&mut self, rec: &Record) {
        self.pending.push(*rec);
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        let mut w = self.world.borrow_mut();
        if w.fail_mirror {
            w.log.push("mirror failed".into());
            return Err(io::Error::other("disk full"));
        }
        for r in records {
            let op = if r.op == Op::Add { "add" } else { "del" };
            w.log
                .push(format!("mirror {op} {} {}", r.fwd.proto, r.fwd.public));
            r.encode(&mut w.mirror_bytes);
        }
        w.log.push("mirror fsync".into());
        Ok(())
    }

    fn load(&mut self) -> io::Result<Replay> {
        Ok(replay(&self.world.borrow().mirror_bytes))
    }

    fn compact(&mut self, live: &[Forward], epoch: u64) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        w.mirror_bytes = compacted(live, epoch);
        w.log.push(format!("mirror compact {}", live.len()));
        Ok(())
    }
}

impl FakeKernel {
    fn failing(&mut self) -> bool {
        let mut w = self.world.borrow_mut();
        if w.fail_kernel > 0 {
            w.fail_kernel -= 1;
            w.log.push("kernel failed".into());
            return true;
        }
        false
    }
}

impl Kernel for FakeKernel {
    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), String> {
        if self.failing() {
            return Err("nft: No such file or directory".into());
        }
        let mut w = self.world.borrow_mut();
        if !w.kernel_structure {
            w.log.push("kernel failed".into());
            return Err("no table".into());
        }
        // Validate first: nft applies a batch all or nothing.
        let mut next = w.kernel.clone();
        for op in ops {
            match op {
                ElemOp::Add(k, v) => {
                    if next.insert(*k, *v).is_some() {
                        return Err(format!("{k:?} exists"));
                    }
                }
                ElemOp::Del(k) => {
                    if next.remove(k).is_none() {
                        return Err(format!("{k:?} missing"));
                    }
                }
            }
        }
        w.kernel = next;
        for op in ops {
            let line = match op {
                ElemOp::Add(k, _) => format!("kernel add {} {}", k.proto, k.public),
                ElemOp::Del(k) => format!("kernel del {} {}", k.proto, k.public),
            };
            w.log.push(line);
        }
        Ok(())
    }

    fn list(&mut self) -> Result<Listing, String> {
        let mut w = self.world.borrow_mut();
        w.log.push("kernel list".into());
        Ok(Listing {
            present: w.kernel_structure,
            structure_ok: w.kernel_structure,
            elements: if w.kernel_structure {
                w.kernel.clone()
            } else {
                Elements::new()
            },
        })
    }

    fn install(&mut self, elements: &Elements) -> Result<(), String> {
        if self.failing() {
            return Err("nft failed".into());
        }
        let mut w = self.world.borrow_mut();
        w.kernel = elements.clone();
        w.kernel_structure = true;
        w.log.push(format!("kernel install {}", elements.len()));
        Ok(())
    }
}

// Helpers the engine tests share.

pub const A1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub type E = Engine<FakeMirror, FakeKernel>;

pub fn engine(quota: u32) -> (E, Shared) {
    let w = world();
    let (m, k) = backends(&w);
    let table = Table::new(
        vec![PUB],
        PortRange {
            lo: 40000,
            hi: 40009,
        },
        quota,
    );
    let mut e = Engine::new(table, m, k);
    e.recover(&Replay::default(), std::time::Instant::now(), 0)
        .unwrap();
    w.borrow_mut().log.clear();
    (e, w)
}

pub fn from(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, 30000))
}

pub fn fwd_req(local_port: u16, mgmt: u16, desired: Option<u16>) -> Message {
    Message::Forward {
        proto: Proto::Tcp,
        local: SocketAddrV4::new(A1, local_port),
        mgmt_port: mgmt,
        desired: desired.map(|p| SocketAddrV4::new(PUB, p)),
    }
}

pub fn log(w: &Shared) -> Vec<String> {
    std::mem::take(&mut w.borrow_mut().log)
}

pub fn one(replies: Vec<Reply>) -> Message {
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.into_iter().next().unwrap().msg
}

pub fn handle(e: &mut E, msg: Message) -> Refusals {
    let mut refusals = Refusals::new();
    e.handle(from(A1), 1, msg, &mut refusals, 100);
    refusals
}

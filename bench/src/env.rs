//! What the benchmark sets up on the machine and always tears down again: a pair of network
//! namespaces joined by a veth pair (a "node" that sends and a "pod" whose `eth0` is captured),
//! and a small ext4 file system on a loop device that can be frozen (`fsfreeze`) to stall every
//! writer on it, tcpdump and sidecap alike.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Addresses live only inside the two namespaces created here.
pub const NODE_IP: &str = "10.213.7.1";
pub const POD_IP: &str = "10.213.7.2";
const NODE_MAC: &str = "02:5c:ab:07:00:01";
const POD_MAC: &str = "02:5c:ab:07:00:02";

pub struct Netns {
    pub node: String,
    pub pod: String,
}

impl Netns {
    pub fn create() -> Result<Netns, String> {
        let id = std::process::id();
        let n = Netns {
            node: format!("scb-node-{id}"),
            pod: format!("scb-pod-{id}"),
        };
        let (node, pod) = (n.node.as_str(), n.pod.as_str());
        sh(&["ip", "netns", "add", node])?;
        sh(&["ip", "netns", "add", pod])?;
        sh(&[
            "ip", "link", "add", "scb0", "netns", node, "address", NODE_MAC, "type", "veth",
            "peer", "name", "eth0", "netns", pod, "address", POD_MAC,
        ])?;
        for (ns, dev, ip) in [(node, "scb0", NODE_IP), (pod, "eth0", POD_IP)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // Static neighbours: no ARP exchange, so no datagram waits in (or is dropped from) an
        // unresolved-neighbour queue.
        for (ns, dev, ip, mac) in [
            (node, "scb0", POD_IP, POD_MAC),
            (pod, "eth0", NODE_IP, NODE_MAC),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(n)
    }

    /// Packets the pod's eth0 received so far.
    pub fn pod_rx_packets(&self) -> Option<u64> {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &self.pod,
            "cat",
            "/sys/class/net/eth0/statistics/rx_packets",
        ])
        .ok()?;
        out.trim().parse().ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.pod]);
        let _ = sh(&["ip", "netns", "del", &self.node]);
    }
}

/// An ext4 file system on a loop device, mounted at `mnt`, that can be frozen.
pub struct LoopFs {
    pub mnt: PathBuf,
    image: PathBuf,
    dev: String,
}

impl LoopFs {
    pub fn create(work: &Path, size_mib: u64) -> Result<LoopFs, String> {
        let image = work.join("slowdisk.img");
        let mnt = work.join("slowdisk");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&image);
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        sh(&["mkfs.ext4", "-q", "-F", &image.display().to_string()])?;
        let dev = sh(&["losetup", "-f", "--show", &image.display().to_string()])?
            .trim()
            .to_string();
        let fs = LoopFs { mnt, image, dev };
        sh(&["mount", &fs.dev, &fs.mnt.display().to_string()])?;
        Ok(fs)
    }

    pub fn freeze(&self, on: bool) {
        let _ = sh(&[
            "fsfreeze",
            if on { "-f" } else { "-u" },
            &self.mnt.display().to_string(),
        ]);
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = sh(&["umount", &self.mnt.display().to_string()]);
        let _ = sh(&["losetup", "-d", &self.dev]);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// CPU seconds the whole machine spent busy so far (every CPU's user, nice, system, irq,
/// softirq and steal time in /proc/stat): kernel writeback charged to kworkers and the
/// generator's share of the capture work show here and not in a tool's own CPU time.
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

/// Memory state before a run, MiB: free, page cache, dirty (/proc/meminfo). A run that starts
/// with little free memory pays for reclaim while writing; the tables carry it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemState {
    pub free_mib: u64,
    pub cached_mib: u64,
    pub dirty_mib: u64,
}

pub fn mem_state() -> MemState {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    MemState {
        free_mib: kib("MemFree") / 1024,
        cached_mib: kib("Cached") / 1024,
        dirty_mib: kib("Dirty") / 1024,
    }
}

/// Starts the next run from the same memory state: write back what earlier runs left dirty
/// (its writeback would otherwise be charged to whichever run comes next) and, with
/// `drop_caches` (`--drop-caches`: on a machine of its own only, it empties everyone's page
/// cache), drop clean page cache so free memory does not run out in one tool's run and not
/// another's.
pub fn settle_memory(drop_caches: bool) {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if drop_caches {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    }
}

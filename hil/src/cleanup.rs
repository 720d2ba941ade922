//! Tearing a lab down: the cleanup registry, leftovers of crashed runs,
//! and Ctrl-C / SIGTERM.
//!
//! - [`Cleanup`] is a stack of [`Undo`] steps: every thing the lab creates
//!   (directory, network namespace, link, moved real NIC, process) is
//!   pushed right after it exists, and [`Cleanup::run`] undoes them in
//!   reverse order, going on past failures (each is reported). It runs
//!   from the lab's `Drop` (normal end, error, panic) and from the signal
//!   handler ([`Interrupts`]); whoever comes first takes the steps, so
//!   nothing is undone twice.
//! - [`find_leftovers`] and [`remove_leftovers`] find and remove what a
//!   crashed run left, recognised by the lab-id prefix of its names
//!   ([`crate::names::lab_of`]); a lab whose owner process still runs is
//!   left alone unless forced.
//!
//! What does not live here: creating anything ([`crate::lab`]), and the
//! orderly part of a teardown that needs the lab working (CNI DEL of every
//! Pod and the leak checks, in [`crate::run`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::Cmd;
use crate::names::{lab_of, LabId};

/// How long a process gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often exits and other conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// The file in a lab directory naming its owner process.
pub const OWNER_FILE: &str = "owner";

/// Where every lab, whatever directory it lives in, registers its owner
/// (`<OWNERS_DIR>/<lab id>/owner`): namespaces and host links are
/// visible to every run on the host, so a run looking for crashed labs
/// must know the owners of labs kept under other roots (a test's
/// temporary directory, `--state-dir`) too, or it would remove live ones.
pub const OWNERS_DIR: &str = "/run/spur-hil-owners";

/// Registers the calling process as the owner of lab `id` in
/// [`OWNERS_DIR`]; returns the directory to remove at teardown.
pub fn register_owner(id: &LabId) -> io::Result<PathBuf> {
    let dir = Path::new(OWNERS_DIR).join(id.as_str());
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(OWNER_FILE), owner_line())?;
    Ok(dir)
}

/// The live owner of lab `id` registered in [`OWNERS_DIR`], if any.
fn registered_owner(id: &LabId) -> Option<u32> {
    let line = fs::read_to_string(Path::new(OWNERS_DIR).join(id.as_str()).join(OWNER_FILE)).ok()?;
    live_owner(&line)
}
/// The file in a lab directory listing real NICs moved into the lab.
pub const REAL_NICS_FILE: &str = "real-nics";

/// A real host interface moved into a node namespace (and renamed there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedNic {
    /// The node namespace it is in.
    pub netns: String,
    /// Its name there (the testbed's NIC name).
    pub name: String,
    /// Its name on the host, restored on the way back.
    pub original: String,
    /// Whether it was up on the host.
    pub was_up: bool,
}

impl MovedNic {
    /// One line of [`REAL_NICS_FILE`].
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\n",
            self.netns,
            self.name,
            self.original,
            if self.was_up { "up" } else { "down" }
        )
    }

    /// Parses one line of [`REAL_NICS_FILE`].
    pub fn from_line(line: &str) -> Option<MovedNic> {
        let mut f = line.trim_end_matches('\n').split('\t');
        let (netns, name, original, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || netns.is_empty() || name.is_empty() || original.is_empty() {
            return None;
        }
        Some(MovedNic {
            netns: netns.into(),
            name: name.into(),
            original: original.into(),
            was_up: state == "up",
        })
    }
}

/// One step of a teardown.
#[derive(Debug)]
pub enum Undo {
    /// Stop a process the lab started: SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`].
    Process {
        /// What it is, e.g. "node-a's ovs-vswitchd".
        what: String,
        /// Its handle (shared with whoever watches it).
        child: Arc<Mutex<Child>>,
    },
    /// Delete a network namespace, killing what still runs in it.
    Netns(String),
    /// Delete a link of the host's namespace.
    HostLink(String),
    /// Move a real NIC back to the host under its original name.
    RealNic(MovedNic),
    /// Remove a directory and everything in it.
    Dir(PathBuf),
    /// Remove whatever else carries the lab's prefix (namespaces and host
    /// links made by others on the lab's behalf, e.g. Pod namespaces) and
    /// its directory under `root`.
    Sweep {
        /// The lab.
        lab: LabId,
        /// The directory holding lab directories.
        root: PathBuf,
    },
}

impl Undo {
    /// What the step does, for messages.
    pub fn describe(&self) -> String {
        match self {
            Undo::Process { what, child } => {
                format!("stop {what} (pid {})", lock(child).id())
            }
            Undo::Netns(n) => format!("delete network namespace {n}"),
            Undo::HostLink(l) => format!("delete host link {l}"),
            Undo::RealNic(m) => format!(
                "move NIC {} of namespace {} back to the host as {}",
                m.name, m.netns, m.original
            ),
            Undo::Dir(d) => format!("remove directory {}", d.display()),
            Undo::Sweep { lab, .. } => format!("remove anything else named {lab}-*"),
        }
    }

    /// Carries the step out.
    pub fn execute(&self) -> Result<(), String> {
        match self {
            Undo::Process { what, child } => stop_child(&mut lock(child), what, STOP_GRACE),
            Undo::Netns(n) => delete_netns(n),
            Undo::HostLink(l) => delete_host_link(l),
            Undo::RealNic(m) => restore_nic(m),
            Undo::Dir(d) => remove_dir(d),
            Undo::Sweep { lab, root } => {
                let found =
                    scan(root).map_err(|e| format!("cannot list namespaces and links: {e}"))?;
                match found.get(lab) {
                    Some(l) => {
                        let problems = remove_lab(l);
                        if problems.is_empty() {
                            Ok(())
                        } else {
                            Err(problems.join("; "))
                        }
                    }
                    None => Ok(()),
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cleanup registry of one lab (see the module documentation).
#[derive(Debug, Default)]
pub struct Cleanup {
    steps: Mutex<Vec<Undo>>,
    /// Held while steps are carried out, so a second [`Cleanup::run`]
    /// (the signal handler's, or the lab's drop) returns only once the
    /// first one is done.
    running: Mutex<()>,
    /// Set once a teardown started: steps registered later are carried
    /// out at once (what a run creates while it is being torn down).
    closed: AtomicBool,
}

impl Cleanup {
    /// An empty registry.
    pub fn new() -> Arc<Cleanup> {
        Arc::new(Cleanup::default())
    }

    /// Registers a step, undone before every step registered earlier.
    pub fn push(&self, step: Undo) {
        if self.closed.load(Ordering::SeqCst) {
            tracing::debug!(step = %step.describe(), "torn down already: undoing at once");
            if let Err(e) = step.execute() {
                tracing::warn!("cannot {}: {e}", step.describe());
            }
            return;
        }
        tracing::debug!(step = %step.describe(), "registered for cleanup");
        lock(&self.steps).push(step);
    }

    /// The registered steps, in the order [`Cleanup::run`] takes them.
    pub fn plan(&self) -> Vec<String> {
        lock(&self.steps).iter().rev().map(Undo::describe).collect()
    }

    /// Takes every registered step and carries them out, last registered
    /// first; a failure does not stop the others. Returns the failures,
    /// each naming its step. A call while another is running waits for it
    /// (and then has nothing left to do); steps registered afterwards are
    /// carried out as they are registered.
    pub fn run(&self) -> Vec<String> {
        let _running = lock(&self.running);
        self.closed.store(true, Ordering::SeqCst);
        let steps = std::mem::take(&mut *lock(&self.steps));
        let mut problems = Vec::new();
        for step in steps.into_iter().rev() {
            tracing::debug!(step = %step.describe(), "cleaning up");
            if let Err(e) = step.execute() {
                problems.push(format!("cannot {}: {e}", step.describe()));
            }
        }
        problems
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        lock(&self.steps).is_empty()
    }
}

/// Stops `child`: SIGTERM, wait up to `grace`, then SIGKILL and wait.
pub fn stop_child(child: &mut Child, what: &str, grace: Duration) -> Result<(), String> {
    if let Ok(Some(_)) = child.try_wait() {
        return Ok(());
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        tracing::debug!(%what, error = %e, "SIGTERM failed");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(format!("cannot wait for {what}: {e}")),
        }
    }
    tracing::warn!(%what, "did not stop within {grace:?} of SIGTERM; killing it");
    child
        .kill()
        .map_err(|e| format!("cannot kill {what}: {e}"))?;
    child
        .wait()
        .map(|_| ())
        .map_err(|e| format!("cannot wait for {what}: {e}"))
}

/// True when `pid` is gone or a zombie.
fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Kills every process of namespace `netns` and waits until they are gone.
fn kill_netns_processes(netns: &str) -> Result<(), String> {
    let out = Cmd::new(
        "ip",
        format!("listing the processes of network namespace {netns}"),
    )
    .args(["netns", "pids", netns])
    .run()
    .map_err(|e| e.to_string())?;
    let pids: Vec<i32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if pids.is_empty() {
        return Ok(());
    }
    for &p in &pids {
        // SIGTERM first so daemons remove their sockets and pid files.
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !pids.iter().all(|&p| gone(p)) {
        std::thread::sleep(POLL);
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
    for &p in &left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !left.iter().all(|&p| gone(p)) {
        std::thread::sleep(POLL);
    }
    let stuck: Vec<String> = left
        .iter()
        .filter(|&&p| !gone(p))
        .map(ToString::to_string)
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "processes {} of namespace {netns} survive SIGKILL",
            stuck.join(", ")
        ))
    }
}

/// True when the named network namespace exists.
pub fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

/// Deletes a network namespace after killing what runs in it; nothing to
/// do when it does not exist.
pub fn delete_netns(netns: &str) -> Result<(), String> {
    if !netns_exists(netns) {
        return Ok(());
    }
    kill_netns_processes(netns)?;
    Cmd::new("ip", format!("deleting network namespace {netns}"))
        .args(["netns", "del", netns])
        .run()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Deletes a link of the host namespace; nothing to do when it is gone.
pub fn delete_host_link(link: &str) -> Result<(), String> {
    if !Path::new("/sys/class/net").join(link).exists() {
        return Ok(());
    }
    match Cmd::new("ip", format!("deleting host link {link}"))
        .args(["link", "del", link])
        .run()
    {
        Ok(_) => Ok(()),
        // Deleting one end of a veth deletes the other: it may just have gone.
        Err(_) if !Path::new("/sys/class/net").join(link).exists() => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Moves a real NIC back to the host's namespace under its original name
/// (renamed inside the lab namespace first, so a host interface named like
/// the testbed NIC is no obstacle) and brings it up if it was up.
pub fn restore_nic(m: &MovedNic) -> Result<(), String> {
    if Path::new("/sys/class/net").join(&m.original).exists() {
        return Ok(()); // already back
    }
    if !netns_exists(&m.netns) {
        return Err(format!(
            "namespace {} is gone and {} is not on the host: look for it with `ip link`",
            m.netns, m.original
        ));
    }
    let doing = format!(
        "moving NIC {} of namespace {} back to the host as {}",
        m.name, m.netns, m.original
    );
    let ip = |args: &[&str]| {
        Cmd::new("ip", doing.clone())
            .args(args)
            .run()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    ip(&["-n", &m.netns, "link", "set", &m.name, "down"])?;
    if m.name != m.original {
        ip(&["-n", &m.netns, "link", "set", &m.name, "name", &m.original])?;
    }
    let host = std::process::id().to_string();
    ip(&["-n", &m.netns, "link", "set", &m.original, "netns", &host])?;
    if m.was_up {
        ip(&["link", "set", &m.original, "up"])?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Everything one lab left on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabLeftovers {
    /// The lab.
    pub lab: Option<LabId>,
    /// Its directory, when it still exists.
    pub dir: Option<PathBuf>,
    /// Its network namespaces.
    pub netns: Vec<String>,
    /// Its links in the host namespace.
    pub links: Vec<String>,
    /// The real NICs it had moved (from its directory).
    pub moved_nics: Vec<MovedNic>,
    /// The process that owns it, when that process still runs.
    pub live_owner: Option<u32>,
}

impl LabLeftovers {
    /// A one-line summary.
    pub fn describe(&self) -> String {
        let lab = self.lab.as_ref().map_or("?", LabId::as_str);
        let mut parts = Vec::new();
        if !self.netns.is_empty() {
            parts.push(format!("{} namespaces", self.netns.len()));
        }
        if !self.links.is_empty() {
            parts.push(format!("{} host links", self.links.len()));
        }
        if !self.moved_nics.is_empty() {
            parts.push(format!("{} real NICs to move back", self.moved_nics.len()));
        }
        if self.dir.is_some() {
            parts.push("its directory".to_string());
        }
        format!("lab {lab}: {}", parts.join(", "))
    }
}

/// Groups namespace, host link and lab directory names by the lab they
/// belong to; names of no lab are ignored.
pub fn group_leftovers(
    netns: &[String],
    links: &[String],
    dirs: &[String],
) -> BTreeMap<LabId, LabLeftovers> {
    fn slot(labs: &mut BTreeMap<LabId, LabLeftovers>, id: LabId) -> &mut LabLeftovers {
        labs.entry(id.clone()).or_insert_with(|| LabLeftovers {
            lab: Some(id),
            ..LabLeftovers::default()
        })
    }
    let mut labs: BTreeMap<LabId, LabLeftovers> = BTreeMap::new();
    for n in netns {
        if let Some(id) = lab_of(n) {
            slot(&mut labs, id).netns.push(n.clone());
        }
    }
    for n in links {
        if let Some(id) = lab_of(n) {
            slot(&mut labs, id).links.push(n.clone());
        }
    }
    for d in dirs {
        if let Some(id) = LabId::parse(d) {
            slot(&mut labs, id).dir = Some(PathBuf::from(d));
        }
    }
    for l in labs.values_mut() {
        l.netns.sort();
        l.links.sort();
    }
    labs
}

fn names_in(dir: &Path) -> io::Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command: state is field 3, starttime field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The owner line this process writes in its lab directory.
pub fn owner_line() -> String {
    let pid = std::process::id();
    format!("{pid} {}\n", process_start_time(pid).unwrap_or(0))
}

/// The pid of the owner named by `line` when that process still runs.
fn live_owner(line: &str) -> Option<u32> {
    let mut f = line.split_whitespace();
    let pid: u32 = f.next()?.parse().ok()?;
    let start: u64 = f.next()?.parse().ok()?;
    (process_start_time(pid) == Some(start)).then_some(pid)
}

/// Every lab with something left on this host: namespaces (`/run/netns`),
/// host links, and directories under `root`.
fn scan(root: &Path) -> io::Result<BTreeMap<LabId, LabLeftovers>> {
    let netns = names_in(Path::new("/run/netns"))?;
    let links = names_in(Path::new("/sys/class/net"))?;
    let dirs = names_in(root)?;
    let mut labs = group_leftovers(&netns, &links, &dirs);
    for l in labs.values_mut() {
        l.live_owner = l.lab.as_ref().and_then(registered_owner);
        if let Some(d) = &l.dir {
            let dir = root.join(d);
            l.live_owner = l.live_owner.or_else(|| {
                fs::read_to_string(dir.join(OWNER_FILE))
                    .ok()
                    .and_then(|s| live_owner(&s))
            });
            l.moved_nics = fs::read_to_string(dir.join(REAL_NICS_FILE))
                .map(|s| s.lines().filter_map(MovedNic::from_line).collect())
                .unwrap_or_default();
            l.dir = Some(dir);
        }
    }
    Ok(labs)
}

/// Labs left on this host, with their owner when it still runs (a lab
/// without a directory has no known owner: it is a crashed run's).
pub fn find_leftovers(root: &Path) -> io::Result<Vec<LabLeftovers>> {
    Ok(scan(root)?.into_values().collect())
}

/// Removes one lab's leftovers: real NICs back to the host, namespaces
/// (after killing their processes), host links, the directory. Returns the
/// problems, each naming what could not be removed.
pub fn remove_lab(l: &LabLeftovers) -> Vec<String> {
    let mut problems = Vec::new();
    let mut step = |r: Result<(), String>| {
        if let Err(e) = r {
            problems.push(e);
        }
    };
    for m in &l.moved_nics {
        step(restore_nic(m));
    }
    // Pod namespaces before node namespaces before the fabric: processes
    // of a node (agent, OVS) may hold links into Pod namespaces.
    let mut netns = l.netns.clone();
    netns.sort_by_key(|n| netns_rank(n, &l.netns));
    for n in &netns {
        step(delete_netns(n));
    }
    for link in &l.links {
        step(delete_host_link(link));
    }
    if let Some(d) = &l.dir {
        step(remove_dir(d));
    }
    if let Some(id) = &l.lab {
        let reg = Path::new(OWNERS_DIR).join(id.as_str());
        if reg.exists() {
            step(remove_dir(&reg));
        }
    }
    problems
}

/// Teardown order of a lab's namespaces: Pods first (a Pod's namespace is
/// named after its node's: `<node netns>-...`), then nodes and the rest,
/// the fabric last.
fn netns_rank(name: &str, all: &[String]) -> u8 {
    if name.split_once('-').is_some_and(|(_, rest)| rest == "fab") {
        2
    } else if all
        .iter()
        .any(|other| other != name && name.starts_with(&format!("{other}-")))
    {
        0
    } else {
        1
    }
}

/// Removes the leftovers of every lab under `root` whose owner no longer
/// runs (every lab when `force`). Returns what was removed and the
/// problems.
pub fn remove_leftovers(root: &Path, force: bool) -> io::Result<(Vec<String>, Vec<String>)> {
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    for l in find_leftovers(root)? {
        if let (Some(pid), false) = (l.live_owner, force) {
            tracing::info!(lab = ?l.lab, pid, "lab in use; left alone");
            continue;
        }
        let p = remove_lab(&l);
        if p.is_empty() {
            removed.push(l.describe());
        }
        problems.extend(p);
    }
    Ok((removed, problems))
}

/// SIGINT / SIGTERM / SIGHUP handling for a run.
///
/// The first signal tears the lab down through the [`Cleanup`] registry
/// and exits with status 130, unless someone is in [`Interrupts::wait`]
/// (a `--keep` lab waiting for Ctrl-C), who is woken instead and does an
/// orderly teardown. A second signal exits at once (leftovers are then
/// removed by the next run or `spur-hil cleanup`).
pub struct Interrupts {
    waiting: Arc<AtomicBool>,
    rx: Mutex<mpsc::Receiver<()>>,
    /// Set by a signal nobody waited for (the run is being torn down).
    unhandled: Arc<AtomicBool>,
}

impl Interrupts {
    /// Installs the handlers on `rt`; `cleanup` is run on the first signal
    /// when nobody waits.
    pub fn install(rt: &tokio::runtime::Handle, cleanup: Arc<Cleanup>) -> io::Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let waiting = Arc::new(AtomicBool::new(false));
        let unhandled = Arc::new(AtomicBool::new(false));
        let count = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel();
        let (w, u) = (waiting.clone(), unhandled.clone());
        rt.spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 {
                    eprintln!(
                        "spur-hil: {name} again: exiting now; `spur-hil cleanup` removes what is left"
                    );
                    std::process::exit(130);
                }
                if w.load(Ordering::SeqCst) {
                    let _ = tx.send(());
                    continue;
                }
                u.store(true, Ordering::SeqCst);
                eprintln!("spur-hil: {name}: tearing the lab down (again to exit at once)");
                let cleanup = cleanup.clone();
                std::thread::spawn(move || {
                    for p in cleanup.run() {
                        eprintln!("spur-hil: cleanup: {p}");
                    }
                    std::process::exit(130);
                });
            }
        });
        Ok(Interrupts {
            waiting,
            rx: Mutex::new(rx),
            unhandled,
        })
    }

    /// Blocks until the next SIGINT/SIGTERM/SIGHUP.
    pub fn wait(&self) {
        self.waiting.store(true, Ordering::SeqCst);
        let _ = lock(&self.rx).recv();
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// True once a signal arrived that nobody waited for (the lab is
    /// being torn down and the process exits).
    pub fn interrupted(&self) -> bool {
        self.unhandled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn steps_run_last_registered_first_and_go_on_past_failures() {
        let c = Cleanup::new();
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        c.push(Undo::Dir(a.clone()));
        c.push(Undo::HostLink("sph00000-mx".into()));
        c.push(Undo::Netns("sph00000-n-node-a".into()));
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        c.push(Undo::Process {
            what: "a sleeper".into(),
            child: Arc::new(Mutex::new(child)),
        });
        assert_eq!(
            c.plan(),
            [
                format!("stop a sleeper (pid {pid})"),
                "delete network namespace sph00000-n-node-a".into(),
                "delete host link sph00000-mx".into(),
                format!("remove directory {}", a.display()),
            ]
        );
        let problems = c.run();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(gone(pid as i32));
        assert!(!a.exists());
        assert!(c.is_empty());
        // Taken once: a second run has nothing to do.
        assert!(c.run().is_empty());
        // Registered after the teardown: undone at once.
        let b = dir.path().join("b");
        fs::create_dir(&b).unwrap();
        c.push(Undo::Dir(b.clone()));
        assert!(!b.exists());
        assert!(c.is_empty());
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        // Let the shell install its trap: poll until it has.
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = child.id();
        while Instant::now() < deadline {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ignored = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if ignored & (1 << 14) != 0 {
                break; // SIGTERM (15) is bit 14
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = Instant::now();
        stop_child(&mut child, "a stubborn shell", Duration::from_millis(300)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_some());
    }

    #[test]
    fn leftovers_are_grouped_by_lab() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let labs = group_leftovers(
            &s(&[
                "sph00001-n-node-a",
                "sph00001-fab",
                "sph00002-n-b",
                "other",
                "sph00001-n-node-a-p-x",
            ]),
            &s(&["eth0", "sph00001-mg", "sph00001-m0", "sph00003-m1"]),
            &s(&["sph00001", "sph00004", "notalab"]),
        );
        let ids: Vec<&str> = labs.keys().map(LabId::as_str).collect();
        assert_eq!(ids, ["sph00001", "sph00002", "sph00003", "sph00004"]);
        let one = &labs[&LabId::parse("sph00001").unwrap()];
        assert_eq!(
            one.netns,
            ["sph00001-fab", "sph00001-n-node-a", "sph00001-n-node-a-p-x"]
        );
        assert_eq!(one.links, ["sph00001-m0", "sph00001-mg"]);
        assert_eq!(one.dir, Some(PathBuf::from("sph00001")));
        assert!(labs[&LabId::parse("sph00004").unwrap()].netns.is_empty());
    }

    #[test]
    fn namespaces_go_pods_first_fabric_last() {
        let all: Vec<String> = [
            "sph00001-fab",
            "sph00001-n-a",
            "sph00001-n-a-default-web-1234",
            "sph00001-n-b",
        ]
        .map(String::from)
        .to_vec();
        let mut v = all.clone();
        v.sort_by_key(|n| netns_rank(n, &all));
        assert_eq!(
            v,
            [
                "sph00001-n-a-default-web-1234",
                "sph00001-n-a",
                "sph00001-n-b",
                "sph00001-fab"
            ]
        );
    }

    #[test]
    fn moved_nics_round_trip_through_their_file() {
        let m = MovedNic {
            netns: "sph00001-n-a".into(),
            name: "eth1".into(),
            original: "enp3s0f0".into(),
            was_up: true,
        };
        assert_eq!(MovedNic::from_line(&m.to_line()), Some(m));
        assert_eq!(MovedNic::from_line("a\tb\n"), None);
    }

    #[test]
    fn owners_are_live_only_with_the_same_start_time() {
        let line = owner_line();
        assert_eq!(live_owner(&line), Some(std::process::id()));
        let pid = std::process::id();
        assert_eq!(live_owner(&format!("{pid} 1")), None);
        assert_eq!(live_owner("garbage"), None);
    }
}

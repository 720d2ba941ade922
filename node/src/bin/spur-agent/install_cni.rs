//! `spur-agent install-cni`: the DaemonSet's init container.
//!
//! What lives here: the file-system side of installing Spur on a node —
//! copying the `spur` plugin binary into the CNI binary directory and, in
//! native mode, rewriting the primary network config of the CNI config
//! directory so that it chains `spur` (and the reverse with `--uninstall`).
//! Every write is atomic: a temporary file in the target directory, fsync,
//! chmod, rename, fsync of the directory. When the directory holds no
//! network config yet (the primary CNI may start after Spur), it polls the
//! directory until one appears or `--wait-seconds` pass.
//!
//! What does not: deciding which file is primary and what it must contain
//! (`spur_core::cniconf`, pure and unit-tested).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spur_core::cniconf::{self, Change, CniConfError};

/// How often the config directory is listed while waiting for a config.
const POLL: Duration = Duration::from_millis(200);

/// Where the plugin is used from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// spur is chained into the primary CNI's conflist.
    Native,
    /// Multus calls spur as a delegate: only the binary is installed.
    Multus,
}

/// Arguments of `spur-agent install-cni`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The spur plugin binary to install (inside the agent's image).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/spur")]
    pub plugin_src: PathBuf,
    /// The node's CNI binary directory.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The node's CNI network config directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// native: chain spur into the primary conflist; multus: only install
    /// the binary (spur networks are Multus delegates).
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    pub mode: Mode,
    /// Remove spur again: unchain it (native mode), then delete the binary.
    #[arg(long)]
    pub uninstall: bool,
    /// How long to wait for the primary CNI to write its network config.
    #[arg(long, default_value_t = 300)]
    pub wait_seconds: u64,
}

/// Runs `install-cni`, printing what it did on stdout.
pub fn run(args: &InstallArgs) -> Result<(), String> {
    let plugin = args.cni_bin_dir.join(cniconf::PLUGIN_TYPE);
    if args.uninstall {
        if args.mode == Mode::Native {
            unchain(&args.cni_conf_dir)?;
        }
        match fs::remove_file(&plugin) {
            Ok(()) => println!("removed {}", plugin.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                println!("{} was not installed", plugin.display())
            }
            Err(e) => return Err(format!("removing {}: {e}", plugin.display())),
        }
        return Ok(());
    }
    let bytes = fs::read(&args.plugin_src)
        .map_err(|e| format!("reading the plugin {}: {e}", args.plugin_src.display()))?;
    fs::create_dir_all(&args.cni_bin_dir)
        .map_err(|e| format!("creating {}: {e}", args.cni_bin_dir.display()))?;
    write_atomic(&args.cni_bin_dir, cniconf::PLUGIN_TYPE, &bytes, 0o755)
        .map_err(|e| format!("installing {}: {e}", plugin.display()))?;
    println!("installed {}", plugin.display());
    if args.mode == Mode::Native {
        chain(&args.cni_conf_dir, Duration::from_secs(args.wait_seconds))?;
    }
    Ok(())
}

/// Chains spur into the primary config of `dir`, waiting up to `wait` for
/// one to appear. A malformed primary is re-read until the deadline too:
/// the primary CNI may be half-way through writing it.
fn chain(dir: &Path, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let mut announced = false;
    loop {
        let files = read_configs(dir)?;
        let pending = match cniconf::chain(&files) {
            Ok(Some(change)) => return apply(dir, change, "chained spur into"),
            Ok(None) => None,
            Err(e @ CniConfError::Malformed { .. }) => Some(e),
            Err(e) => return Err(e.to_string()),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(match pending {
                Some(e) => e.to_string(),
                None => format!(
                    "no CNI network config (*.conf, *.conflist, *.json) appeared in {} within \
                     {}s; is the primary CNI installed?",
                    dir.display(),
                    wait.as_secs()
                ),
            });
        }
        if !announced {
            match &pending {
                Some(e) => println!("waiting for a valid primary network config: {e}"),
                None => println!(
                    "waiting up to {}s for a CNI network config in {}",
                    wait.as_secs(),
                    dir.display()
                ),
            }
            announced = true;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

fn unchain(dir: &Path) -> Result<(), String> {
    let files = read_configs(dir)?;
    match cniconf::unchain(&files).map_err(|e| e.to_string())? {
        None => {
            println!(
                "no CNI network config in {}: nothing to unchain",
                dir.display()
            );
            Ok(())
        }
        Some(change) => apply(dir, change, "unchained spur from"),
    }
}

/// Carries out a change of the primary config; `verb` says what a write is.
fn apply(dir: &Path, change: Change, verb: &str) -> Result<(), String> {
    match change {
        Change::Unchanged { file } => {
            let path = dir.join(file);
            if verb.starts_with("chained") {
                println!("already chained: {}", path.display());
            } else {
                println!("spur not chained into {}", path.display());
            }
            Ok(())
        }
        Change::Write {
            file,
            content,
            replaces,
        } => {
            let path = dir.join(&file);
            let source = dir.join(replaces.as_deref().unwrap_or(&file));
            // Keep the permissions the primary CNI gave its config.
            let mode = fs::metadata(&source)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            write_atomic(dir, &file, content.as_bytes(), mode)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            match replaces {
                Some(old) => {
                    let old = dir.join(old);
                    fs::remove_file(&old)
                        .and_then(|()| sync_dir(dir))
                        .map_err(|e| format!("removing {}: {e}", old.display()))?;
                    println!(
                        "{verb} {} (converted from {})",
                        path.display(),
                        old.display()
                    );
                }
                None => println!("{verb} {}", path.display()),
            }
            Ok(())
        }
    }
}

/// The network config files of `dir` (name -> content); an absent directory
/// holds none. Files that vanish while being read are skipped.
fn read_configs(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut files = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !cniconf::is_config_name(&name) {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
        match fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name, text);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
    }
    Ok(files)
}

/// Writes `dir/name` atomically with permissions `mode`: a temporary file in
/// `dir` (hidden, without a config extension), fsync, chmod, rename, and an
/// fsync of `dir` so that the rename survives a crash.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.spur-tmp-{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

//! The state file of `spur-kubeapi --state FILE`: an append-only journal of
//! mutations, each written and flushed to disk before the request that made
//! it is acknowledged, compacted into a snapshot when the server starts.
//! A torn last line (a crash mid-write) belongs to a request that was never
//! acknowledged and is dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::store::{Journal, Mutation};

/// A journal appended to a file, flushed to disk on every record.
#[derive(Debug)]
pub struct FileJournal {
    file: File,
    path: PathBuf,
}

impl FileJournal {
    /// Reads the records of `path` (none when it does not exist).
    pub fn load(path: &Path) -> std::io::Result<Vec<Mutation>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Mutation>(&line) {
                Ok(m) => out.push(m),
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: line {}: {e}", path.display(), i + 1),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Replaces the file with `snapshot` (atomically: temporary file,
    /// flush, rename) and opens it for appending.
    pub fn rewrite(path: &Path, snapshot: &[Mutation]) -> std::io::Result<FileJournal> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            for m in snapshot {
                serde_json::to_writer(&mut f, m)?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(FileJournal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Journal for FileJournal {
    fn record(&mut self, m: &Mutation) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(m)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

//! `spur-agent ipam show POOL`: who holds which address of a pool, read
//! straight from the API (a command-line tool may list; the allocation path
//! does not).

use kube::api::ListParams;
use kube::{Api, Client};
use spur_core::allocator::PoolBlocks;
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::Invalid;

/// Why a pool cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// No such pool.
    #[error("IPPool {pool} not found")]
    NotFound {
        /// The pool.
        pool: String,
    },
    /// The pool's spec is invalid.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// The API failed.
    #[error("reading {what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// A pool's blocks as stored, and the blocks that could not be taken into
/// account (with the reason).
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// The pool's blocks.
    pub blocks: PoolBlocks,
    /// Malformed blocks, one message each.
    pub problems: Vec<String>,
}

/// Reads a pool and lists its blocks.
pub async fn load(client: Client, pool: &str) -> Result<PoolReport, ShowError> {
    let pools: Api<IPPool> = Api::all(client.clone());
    let obj = pools
        .get_opt(pool)
        .await
        .map_err(|source| ShowError::Api {
            what: format!("IPPool {pool}"),
            source,
        })?
        .ok_or_else(|| ShowError::NotFound {
            pool: pool.to_string(),
        })?;
    let layout = PoolLayout::from_pool(&obj)?;
    let blocks: Api<IPAMBlock> = Api::all(client);
    let list = blocks
        .list(&ListParams::default())
        .await
        .map_err(|source| ShowError::Api {
            what: "IPAMBlocks".into(),
            source,
        })?;
    let mut pb = PoolBlocks::new(layout);
    let mut problems = Vec::new();
    for b in list.items.iter().filter(|b| b.spec.pool == pool) {
        if let Err(e) = pb.upsert_block(b) {
            problems.push(e.to_string());
        }
    }
    Ok(PoolReport {
        blocks: pb,
        problems,
    })
}

/// Renders a pool: a header with its size, the addresses in use and the
/// number of blocks, then one line per allocated address (sorted by
/// address) with the node of its block, the owner and the container ID.
pub fn render(report: &PoolReport) -> String {
    let pb = &report.blocks;
    let layout = pb.layout();
    let mut out = format!(
        "IPPool {}: {} addresses, {} used, {} blocks\n",
        layout.name,
        layout.size(),
        pb.used(),
        pb.blocks().len()
    );
    let header = ["ADDRESS", "NODE", "OWNER", "CONTAINER"].map(String::from);
    let mut rows: Vec<[String; 4]> = pb
        .holders()
        .map(|(ip, node, owner)| {
            [
                ip.to_string(),
                node.to_string(),
                owner.to_string(),
                if owner.container_id.is_empty() {
                    "-".to_string()
                } else {
                    owner.container_id.clone()
                },
            ]
        })
        .collect();
    // holders() walks blocks and offsets in ascending order already.
    if rows.is_empty() {
        out.push_str("no address is allocated\n");
    } else {
        rows.insert(0, header);
        let widths: Vec<usize> = (0..4)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line = (0..4)
                .map(|c| {
                    if c == 3 {
                        r[c].clone()
                    } else {
                        format!("{:<w$}", r[c], w = widths[c])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ");
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    for p in &report.problems {
        out.push_str(&format!("warning: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec, Owner};
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    #[test]
    fn lines_are_sorted_by_address_and_aligned() {
        let layout = PoolLayout::from_spec(
            "vlan100-ipv4",
            &IPPoolSpec {
                ip_ranges: vec![IpRange::cidr("10.10.1.0/25")],
                subnet_info: SubnetInfo {
                    gateway: "10.10.1.1".into(),
                    prefix_length: 24,
                    vlan: Some(100),
                },
                exclude: vec![],
            },
        )
        .unwrap();
        let mut pb = PoolBlocks::new(layout);
        let block = |name: &str, cidr: &str, node: &str, allocs: Vec<(u8, Owner)>| {
            IPAMBlock::new(
                name,
                IPAMBlockSpec {
                    pool: "vlan100-ipv4".into(),
                    cidr: cidr.into(),
                    node: node.into(),
                    allocations: allocs
                        .into_iter()
                        .map(|(offset, owner)| BlockAllocation { offset, owner })
                        .collect(),
                },
            )
        };
        // The second window is listed first: output is still by address.
        pb.upsert_block(&block(
            "b",
            "10.10.1.64/26",
            "node-b",
            vec![(0, Owner::stateful_set("db", "pg", 0, "eth1", "pg-0", ""))],
        ))
        .unwrap();
        pb.upsert_block(&block(
            "a",
            "10.10.1.0/26",
            "node-a",
            vec![
                (3, Owner::pod("default", "web-2", "c2", "eth1")),
                (2, Owner::pod("default", "web-1", "c1", "net1")),
            ],
        ))
        .unwrap();
        let text = render(&PoolReport {
            blocks: pb,
            problems: vec!["IPAMBlock x: broken".into()],
        });
        assert_eq!(
            text,
            "IPPool vlan100-ipv4: 126 addresses, 3 used, 2 blocks\n\
             ADDRESS     NODE    OWNER                                            CONTAINER\n\
             10.10.1.2   node-a  Pod default/web-1 interface net1 (container c1)  c1\n\
             10.10.1.3   node-a  Pod default/web-2 interface eth1 (container c2)  c2\n\
             10.10.1.64  node-b  StatefulSet db/pg ordinal 0 interface eth1       -\n\
             warning: IPAMBlock x: broken\n"
        );
    }
}

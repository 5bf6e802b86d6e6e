//! `replctl node info [NODE]`.

use anyhow::Result;
use comfy_table::Cell;

use crate::Ctx;
use crate::output::{self, NodeInfoJson};
use crate::target::NodeName;

/// `replctl node ...`
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// The node's name, repld version, uptime and devices (size, used, free).
    ///
    /// Example: replctl node info node1
    Info {
        /// A node from the replctl config [default: the local admin socket or --endpoint].
        node: Option<NodeName>,
    },
}

/// Runs a `node` command.
pub async fn run(ctx: &Ctx, cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Info { node } => {
            let info = ctx.nodes.admin(node.as_ref()).await?.node_info().await?;
            ctx.out.emit(&NodeInfoJson::from(&info), || {
                let mut s = format!(
                    "node     {}\nversion  {}\nuptime   {}\n\n",
                    info.node_name,
                    info.version,
                    output::duration(info.uptime)
                );
                let mut t =
                    output::table(&["device", "size", "used", "free", "used%", "volume uuid"]);
                for d in &info.devices {
                    let pct = if d.size_bytes == 0 {
                        0.0
                    } else {
                        d.used_bytes as f64 * 100.0 / d.size_bytes as f64
                    };
                    t.add_row(vec![
                        Cell::new(&d.path),
                        Cell::new(output::bytes(d.size_bytes)),
                        Cell::new(output::bytes(d.used_bytes)),
                        Cell::new(output::bytes(d.free_bytes)),
                        Cell::new(format!("{pct:.1}%")),
                        Cell::new(d.volume_uuid),
                    ]);
                }
                output::align_right(&mut t, &[1, 2, 3, 4]);
                s.push_str(&output::render(&t));
                s
            })
        }
    }
}

//! Failover: `replctl pfs upgrade|downgrade`, and the history check of `replctl pair` (is the
//! target's history a prefix of the master's? if not, where did they diverge, and `--rollback`).

use anyhow::{Result, bail};
use repl_proto::pb;
use repl_types::Tid;
use serde::Serialize;
use tonic::transport::Channel;

use crate::Ctx;
use crate::output;
use crate::target::Target;

type Admin = pb::admin_client::AdminClient<Channel>;

/// Commits listed per `PfsLinks` call while looking for the last common TID.
const PAGE: u32 = 1000;

#[derive(Debug, Serialize)]
struct UpgradeJson {
    pfs: String,
    role: &'static str,
    head_tid: String,
    dropped_tid: Option<String>,
    dropped_chunks: u64,
    revoked_masters: Vec<String>,
}

#[derive(Debug, Serialize)]
struct DowngradeJson {
    pfs: String,
    role: &'static str,
    head_tid: String,
    halted_pairings: Vec<String>,
}

async fn admin(ctx: &Ctx, t: &Target) -> Result<Admin> {
    Ok(ctx.nodes.admin(t.node.as_ref()).await?.into_inner())
}

/// `replctl pfs upgrade NODE:PFS [--force]`.
pub async fn upgrade(ctx: &Ctx, target: &Target, force: bool) -> Result<()> {
    let r = admin(ctx, target)
        .await?
        .pfs_upgrade(pb::PfsUpgradeRequest {
            name: target.pfs.to_string(),
            force,
        })
        .await?
        .into_inner();
    let head = Tid(r.pfs.as_ref().map_or(0, |p| p.head_tid));
    let dropped = (r.dropped_tid != 0).then_some(Tid(r.dropped_tid));
    let json = UpgradeJson {
        pfs: target.location(),
        role: "master",
        head_tid: head.to_string(),
        dropped_tid: dropped.map(|t| t.to_string()),
        dropped_chunks: r.dropped_chunks,
        revoked_masters: r.revoked_masters.clone(),
    };
    ctx.out.emit(&json, || {
        let mut s = format!(
            "upgraded {} to a master at its synced TID {}\n",
            target.location(),
            output::tid(head)
        );
        match dropped {
            Some(t) => s.push_str(&format!(
                "dropped the partly received TID {t}: {} chunk(s) of it had arrived\n",
                r.dropped_chunks
            )),
            None => s.push_str("nothing partly received was dropped\n"),
        }
        if !r.revoked_masters.is_empty() {
            s.push_str(&format!(
                "no longer accepts pushes from {}\n",
                r.revoked_masters.join(", ")
            ));
        }
        s
    })
}

/// `replctl pfs downgrade NODE:PFS`.
pub async fn downgrade(ctx: &Ctx, target: &Target) -> Result<()> {
    let r = admin(ctx, target)
        .await?
        .pfs_downgrade(pb::PfsDowngradeRequest {
            name: target.pfs.to_string(),
        })
        .await?
        .into_inner();
    let head = Tid(r.pfs.as_ref().map_or(0, |p| p.head_tid));
    let json = DowngradeJson {
        pfs: target.location(),
        role: "slave",
        head_tid: head.to_string(),
        halted_pairings: r.stopped_pairings.clone(),
    };
    ctx.out.emit(&json, || {
        let mut s = format!(
            "downgraded {} to a read-only slave at {}\n",
            target.location(),
            output::tid(head)
        );
        if !r.stopped_pairings.is_empty() {
            s.push_str(&format!(
                "halted its pairings to {} (`replctl status` shows them as downgraded)\n",
                r.stopped_pairings.join(", ")
            ));
        }
        s
    })
}

/// Commits of a PFS after a TID: how many, and the first and last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Commits (at least; `more` when the count stopped early).
    pub commits: usize,
    /// The first and last TIDs.
    pub first: Tid,
    /// The last TID.
    pub last: Tid,
    /// More commits than counted.
    pub more: bool,
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.commits == 0 {
            return write!(f, "no commits");
        }
        write!(
            f,
            "{}{} commit(s), TIDs {} .. {} ({} .. {})",
            self.commits,
            if self.more { "+" } else { "" },
            self.first,
            self.last,
            self.first.to_rfc3339(),
            self.last.to_rfc3339()
        )
    }
}

/// Where two histories part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    /// The newest TID up to which both hold the same commits (`Tid::ZERO`: none in common).
    pub common: Tid,
    /// The target's commits after it.
    pub target: Range,
    /// The master's commits after it.
    pub master: Range,
}

fn link_bytes(b: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(b)
        .map_err(|_| anyhow::anyhow!("a node sent a history link that is not 32 bytes"))
}

async fn links(
    a: &mut Admin,
    pfs: &str,
    at: Vec<u64>,
    list: (Tid, Tid, u32),
) -> Result<pb::PfsLinksResponse> {
    Ok(a.pfs_links(pb::PfsLinksRequest {
        name: pfs.to_owned(),
        at,
        list_after: list.0.get(),
        list_before: list.1.get(),
        list_limit: list.2,
    })
    .await?
    .into_inner())
}

/// The commits of `pfs` after `after` (counted up to 10 pages).
async fn range_after(a: &mut Admin, pfs: &str, after: Tid) -> Result<Range> {
    let mut out = Range {
        commits: 0,
        first: Tid::ZERO,
        last: Tid::ZERO,
        more: false,
    };
    let mut before = Tid::ZERO; // 0: no upper bound
    for _ in 0..10 {
        let r = links(a, pfs, Vec::new(), (after, before, PAGE)).await?;
        let Some(oldest) = r.commits.last() else {
            return Ok(out);
        };
        if out.commits == 0 {
            out.last = Tid(r.commits[0].tid);
        }
        out.commits += r.commits.len();
        out.first = Tid(oldest.tid);
        before = Tid(oldest.tid);
        if r.commits.len() < PAGE as usize {
            return Ok(out);
        }
    }
    out.more = true;
    Ok(out)
}

/// Compares the target's history with the master's: `None` when the target's is a prefix of
/// the master's (replication continues after the target's head), else where they diverge.
pub async fn compare(
    m: &mut Admin,
    master_pfs: &str,
    s: &mut Admin,
    slave_pfs: &str,
) -> Result<Option<Divergence>> {
    let theirs = links(s, slave_pfs, Vec::new(), (Tid::ZERO, Tid::ZERO, 0)).await?;
    let head = Tid(theirs.head_tid);
    let ours = links(m, master_pfs, vec![head.get()], (Tid::ZERO, Tid::ZERO, 0)).await?;
    let at_head = ours
        .at
        .first()
        .ok_or_else(|| anyhow::anyhow!("the master's node answered no link"))?;
    if link_bytes(&at_head.link)? == link_bytes(&theirs.head_link)? {
        return Ok(None);
    }
    // Walk the target's commits newest first; the first whose link the master has at its TID
    // is the last common one (a common history is a prefix of both).
    let mut before = Tid::ZERO;
    let mut common = Tid::ZERO;
    'pages: loop {
        let page = links(s, slave_pfs, Vec::new(), (Tid::ZERO, before, PAGE)).await?;
        if page.commits.is_empty() {
            break;
        }
        let tids: Vec<u64> = page.commits.iter().map(|c| c.tid).collect();
        let at = links(m, master_pfs, tids, (Tid::ZERO, Tid::ZERO, 0)).await?;
        for (mine, theirs) in at.at.iter().zip(&page.commits) {
            if mine.commit_tid == theirs.tid && link_bytes(&mine.link)? == link_bytes(&theirs.link)?
            {
                common = Tid(theirs.tid);
                break 'pages;
            }
        }
        before = Tid(page.commits.last().map_or(0, |c| c.tid));
        if page.commits.len() < PAGE as usize {
            break;
        }
    }
    Ok(Some(Divergence {
        common,
        target: range_after(s, slave_pfs, common).await?,
        master: range_after(m, master_pfs, common).await?,
    }))
}

/// The refusal of a pairing whose target diverged, naming the TIDs and the way out.
pub fn refusal(d: &Divergence, master: &str, slave: &str) -> String {
    let common = if d.common == Tid::ZERO {
        "they have no commit in common".to_owned()
    } else {
        format!("the last common TID is {}", output::tid(d.common))
    };
    format!(
        "refusing to pair: the history of {slave} is not a prefix of {master}'s; {common}.\n  \
         {slave} (target) diverges with {}: the master never had them.\n  \
         {master} (master) diverges with {}.\n\
         Pairing would mix two histories. To discard the target's diverging commits and continue \
         incrementally from {}, pair again with --rollback. First save what they hold, if it \
         matters: `replctl export {slave}@{} -o before-rollback.tar` (the target's state at its \
         last diverging TID).",
        d.target, d.master, d.common, d.target.last
    )
}

/// Before a pairing: checks that the target's history is a prefix of the master's. When it is
/// not, refuses (naming the TIDs), or with `rollback` discards the target's diverging commits.
pub async fn check_before_pairing(
    ctx: &Ctx,
    (m, master, master_node): (&mut Admin, &Target, &str),
    (s, slave): (&mut Admin, &Target),
    rollback: bool,
) -> Result<()> {
    // A slave follows one master: refuse a second one before anything (a rollback) is done.
    let status = s
        .replication_status(pb::ReplicationStatusRequest {})
        .await?
        .into_inner();
    if let Some(bound) = status.slaves.iter().find(|x| {
        x.slave_pfs == slave.pfs.as_str() && !x.master_nodes.iter().any(|n| n == master_node)
    }) {
        bail!(
            "refusing to pair: {} already replicates from {}, and a slave follows one master's \
             history only (two masters with one shared UUID would interleave two histories). If \
             {master_node} is the master now, unpair the old master first: `replctl unpair \
             OLD:PFS {}`",
            slave.location(),
            bound.master_nodes.join(", "),
            slave.location()
        );
    }
    let find = |list: Vec<pb::PfsInfo>, name: &str| list.into_iter().find(|p| p.name == name);
    let target = find(
        s.pfs_list(pb::PfsListRequest {}).await?.into_inner().pfses,
        slave.pfs.as_str(),
    );
    let source = find(
        m.pfs_list(pb::PfsListRequest {}).await?.into_inner().pfses,
        master.pfs.as_str(),
    );
    // A new target, a master or another pair's slave: the slave's node refuses or creates it.
    let related = target.zip(source).is_some_and(|(t, m)| {
        t.role == i32::from(pb::PfsRole::Slave) && t.shared_uuid == m.shared_uuid
    });
    if !related {
        return Ok(());
    }
    let Some(d) = compare(m, master.pfs.as_str(), s, slave.pfs.as_str()).await? else {
        return Ok(());
    };
    let (ml, sl) = (master.location(), slave.location());
    if !rollback {
        bail!(refusal(&d, &ml, &sl));
    }
    let r = s
        .pfs_rollback(pb::PfsRollbackRequest {
            name: slave.pfs.to_string(),
            to_tid: d.common.get(),
        })
        .await?
        .into_inner();
    if !ctx.quiet {
        eprintln!(
            "rolled {sl} back to {}: discarded {} commit(s){}",
            output::tid(d.common),
            r.commits_discarded,
            if r.commits_discarded > 0 {
                format!(" ({} .. {})", Tid(r.first_tid), Tid(r.last_tid))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

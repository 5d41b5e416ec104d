//! `microfunnel inspect-snapshot FILE`: what a snapshot file holds and whether it is intact.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use microfunnel::store;

#[derive(Args)]
pub struct InspectArgs {
    /// A snapshot file (`<checkpoint.dir>/<group>/shard-NNNN/<seq>.snap`, a base), a delta
    /// (`<seq>.delta`: the chain that ends at it, from the newest usable base before it), or a
    /// shard directory (its newest usable chain, what a restore loads).
    file: PathBuf,
    /// Journey the state was written under (needed to decode the body): a built-in journey's name
    /// or a TOML file.
    #[arg(long, value_name = "NAME|FILE", default_value = microfunnel::journeys::DEFAULT)]
    journey: PathBuf,
    /// Print this prospect's state instead of the header.
    #[arg(long)]
    prospect: Option<String>,
}

/// Prints the header, the checksum verdict and the decoded prospect count as JSON; exits 1 if
/// a file is damaged or does not decode.
pub fn run(args: InspectArgs) -> anyhow::Result<bool> {
    if !args.file.exists() {
        anyhow::bail!("cannot read {}: no such file or directory", args.file.display());
    }
    let (chain, rejected) =
        if args.file.is_dir() { store::newest_chain_in(&args.file) } else { store::chain_ending_at(&args.file) };
    let rejected: Vec<String> = rejected.iter().map(ToString::to_string).collect();
    let checked = match chain {
        Some(c) => c,
        None => {
            let error = rejected.last().cloned().unwrap_or_else(|| "no base and deltas make a chain here".to_string());
            let out =
                serde_json::json!({ "file": args.file, "checksums": "failed", "error": error, "rejected": rejected });
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out)?)?;
            return Ok(false);
        }
    };
    let journey = crate::load_journey(&args.journey)?;
    let engine = match checked.engine(journey) {
        Ok(e) => e,
        Err(e) => {
            let out = serde_json::json!({
                "file": args.file, "checksums": "ok", "header": checked.header(), "decode": "failed", "error": e.to_string()
            });
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out)?)?;
            return Ok(false);
        }
    };
    if let Some(id) = &args.prospect {
        // Any id linked to the prospect (`[identity] resolve`) answers with the canonical one.
        let (canonical, linked) = engine.linked_ids(id);
        let shard = checked.header().shard;
        let elsewhere = |canonical: &str| {
            anyhow::anyhow!(
                "prospect `{id}` is linked to `{canonical}`, whose state is not in this snapshot (shard {shard}): it lives on the partition of `{canonical}`; inspect that shard's snapshot with --prospect {canonical}, or ask GET /prospects/{canonical}"
            )
        };
        let Some(ix) = engine.find(canonical) else {
            if canonical != id.as_str() {
                return Err(elsewhere(canonical));
            }
            anyhow::bail!("prospect `{id}` is not in this snapshot (shard {shard})");
        };
        if engine.prospect(ix).has(microfunnel::core::prospect::REDIRECT) {
            if canonical != id.as_str() {
                return Err(elsewhere(canonical));
            }
            if engine.identity_map().is_some() {
                anyhow::bail!(
                    "`{id}` is a redirect in this snapshot (shard {shard}): identity resolution moved its state to another partition, and this shard's identity map no longer names the person (it left memory); GET /prospects/{id} answers where it lives now"
                );
            }
            anyhow::bail!(
                "`{id}` is a redirect in this snapshot (shard {}): identity resolution moved its state to the prospect of its canonical id; pass --journey with the journey the service runs ([identity] resolve = true) to follow it",
                checked.header().shard
            );
        }
        let mut view = serde_json::to_value(engine.view(ix, Some(engine.watermark()).filter(|w| !w.is_none())))?;
        view["linked_ids"] = serde_json::json!(linked);
        writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&view)?)?;
        return Ok(true);
    }
    let digest_ok = format!("{:016x}", engine.digest()) == checked.header().digest;
    let out = serde_json::json!({
        "file": args.file,
        "checksums": "ok",
        "decode": "ok",
        "digest_matches": digest_ok,
        "prospects_decoded": engine.len(),
        "watermark": engine.watermark().to_string(),
        "crm_memory": {
            "complete": engine.crm().is_complete(),
            "entries": engine.crm().memories().map(|(t, m)| (t.to_string(), m.len())).collect::<std::collections::BTreeMap<_, _>>(),
        },
        "identity_ids": engine.identity_map().map(|m| m.len()),
        "base": checked.base.path,
        "deltas": checked.deltas.iter().map(|d| &d.path).collect::<Vec<_>>(),
        "rejected": rejected,
        "resolved_digest": engine.identity_map().map(|_| format!("{:016x}", engine.resolved_digest())),
        "header": checked.header(),
    });
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out)?)?;
    Ok(digest_ok)
}

//! `microfunnel replay`: run the engine over a JSONL file, write every output as a JSON line.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use crate::codec::{self, Limits};
use crate::core::{Engine, Journey, Output, Ts};

pub struct Options {
    pub limits: Limits,
    /// Advance time to this instant at the end (default: the last event time).
    pub until: Option<Ts>,
    /// Also print a digest line of the final per-prospect state.
    pub digest: bool,
    /// Print only the final summary (and digest), not every output.
    pub summary_only: bool,
}

/// Totals of a replay run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub lines: u64,
    pub rejected: u64,
    pub outputs: u64,
}

/// Reads JSONL from `input`, writes outputs and a final funnel summary to `out`, rejected lines
/// (with line number and reason) to `err`. Same input, same bytes out.
pub fn run(
    journey: Arc<Journey>,
    opts: &Options,
    mut input: impl BufRead,
    mut out: impl Write,
    mut err: impl Write,
) -> io::Result<(Engine, Totals)> {
    let mut engine = Engine::new(journey);
    let mut totals = Totals::default();
    let mut line = Vec::with_capacity(1024);
    let mut outputs = Vec::with_capacity(16);
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        let bytes = trim_newline(&line);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        totals.lines += 1;
        match codec::decode(bytes, engine.journey(), &opts.limits) {
            Ok(ev) => engine.apply(&ev, &mut outputs),
            Err(e) => {
                totals.rejected += 1;
                writeln!(err, "line {n}: {}: {e}", e.reason().as_str())?;
                continue;
            }
        }
        flush(&engine, &mut outputs, &mut buf, &mut totals, n, opts.summary_only, &mut out, &mut err)?;
    }
    let end = opts.until.unwrap_or(engine.max_event_time());
    engine.advance_to(end, &mut outputs);
    flush(&engine, &mut outputs, &mut buf, &mut totals, n, opts.summary_only, &mut out, &mut err)?;
    let report = engine.funnel().report(engine.journey());
    let census = engine.census();
    let figures = codec::outbound::Figures {
        watermark: engine.watermark(),
        stats: engine.stats(),
        census: &census,
        funnel: &report,
    };
    codec::write_report(&figures, &mut buf).map_err(io::Error::other)?;
    buf.push(b'\n');
    if opts.digest {
        buf.extend_from_slice(
            format!("{{\"kind\":\"digest\",\"prospects\":{},\"digest\":\"{:016x}\"}}\n", engine.len(), engine.digest())
                .as_bytes(),
        );
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok((engine, totals))
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[allow(clippy::too_many_arguments)]
fn flush(
    engine: &Engine,
    outputs: &mut Vec<Output>,
    buf: &mut Vec<u8>,
    totals: &mut Totals,
    line: u64,
    summary_only: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<()> {
    for o in outputs.drain(..) {
        if let Output::Rejected { reason, detail } = &o {
            totals.rejected += 1;
            writeln!(err, "line {line}: {}: {detail}", reason.as_str())?;
            continue;
        }
        totals.outputs += 1;
        if summary_only {
            continue;
        }
        codec::write_output(engine, &o, buf).map_err(io::Error::other)?;
        buf.push(b'\n');
    }
    if buf.len() >= 64 * 1024 {
        out.write_all(buf)?;
        buf.clear();
    }
    Ok(())
}

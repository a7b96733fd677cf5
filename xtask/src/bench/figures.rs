//! The figures a benchmark produces (table rows, run sizes) and the helpers that parse and
//! summarise measurements; shared by the host and VM benchmarks.

/// Whether a figure has a floor, and whether it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// No floor: reported only.
    Report,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    /// The measured value, as text with its unit (always produced by a measurement).
    pub value: String,
    /// Whether a number was actually measured (smoke checks this).
    pub measured: bool,
    pub floor: String,
    pub verdict: Verdict,
    /// Where the figure was measured ("host" or "VM").
    pub place: &'static str,
    pub command: String,
    /// Checked by `--smoke` too (a floor meaningful at smoke size).
    pub smoke: bool,
}

impl Row {
    pub fn floor(figure: impl Into<String>, value: String, floor: &str, pass: bool) -> Row {
        Row {
            figure: figure.into(),
            value,
            measured: true,
            floor: floor.into(),
            verdict: if pass { Verdict::Pass } else { Verdict::Fail },
            place: "host",
            command: String::new(),
            smoke: false,
        }
    }

    pub fn report(figure: impl Into<String>, value: String) -> Row {
        Row {
            figure: figure.into(),
            value,
            measured: true,
            floor: "report only".into(),
            verdict: Verdict::Report,
            place: "host",
            command: String::new(),
            smoke: false,
        }
    }

    /// Marks a floor that `--smoke` checks as well.
    pub fn smoke(mut self) -> Row {
        self.smoke = true;
        self
    }

    /// A benchmark that produced no number.
    pub fn missing(figure: impl Into<String>, why: String) -> Row {
        Row {
            figure: figure.into(),
            value: format!("NOT MEASURED: {why}"),
            measured: false,
            floor: String::new(),
            verdict: Verdict::Fail,
            place: "host",
            command: String::new(),
            smoke: false,
        }
    }
}

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub events: u64,
    pub devices: u64,
    pub vms: u64,
    pub idle_s: u64,
    /// Cost per probed call: interleaved baseline/tool rounds per block, storm pairs a round.
    pub rounds: u64,
    pub pairs: u64,
    pub hot_n: u64,
    pub lat_n: u64,
    pub acc_n: u64,
    /// Detail under storms: `pairs:gap_us` steps (`storm <vdev> <pairs> <gap_us>`), in order.
    pub rate_steps: &'static str,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            events: 4_000_000,
            devices: 4096,
            vms: 256,
            idle_s: 30,
            rounds: 31,
            pairs: 300,
            hot_n: 1_000_000,
            lat_n: 200,
            acc_n: 20,
            rate_steps: "20000:0 5000:0 5000:2 5000:5 5000:10 5000:20 5000:50 5000:100 5000:200",
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            events: 20_000,
            devices: 64,
            vms: 4,
            idle_s: 3,
            rounds: 5,
            pairs: 100,
            hot_n: 10_000,
            lat_n: 4,
            acc_n: 4,
            rate_steps: "1000:0 200:50",
        }
    }
}

/// Parses `key=value` lines/tokens.
pub fn kv(text: &str) -> std::collections::BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Issue 14's floor for the daemon's peak RSS (VmHWM), in the VM and for the pipeline holding
/// 4,096 bindings on the host.
pub const RSS_FLOOR_MIB: f64 = 16.0;

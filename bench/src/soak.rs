//! `soak`: the relay under a steady mix for a long time (idle phones held,
//! echo at a fixed rate, phones churning at a fixed rate), its RSS sampled
//! at a fixed interval. Memory that a relay never gives back shows as an
//! upward trend once the load is steady, so the trend is fitted over the
//! last half of the run (the first half is warm-up: pools, slot vectors and
//! maps reach their working size) and flagged when it rises by more than
//! [`Trend::threshold`]. After the load, the relay rests with its idle
//! population and its RSS is compared with its RSS before the load.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gen::{Errors, Mode};
use crate::scenario::{cpu, finish_run, fmt_count, sample, Env, Rest};
use crate::target::Kind;

/// What a soak run does.
#[derive(Clone, Debug)]
pub struct SoakParams {
    pub duration: Duration,
    /// RSS sampling interval.
    pub interval: Duration,
    /// Phones that only hold their connection.
    pub idle_phones: usize,
    /// Phones that take turns sending (open loop) at `rate`.
    pub echo_phones: usize,
    pub phones_per_binary: usize,
    /// Echoes per second over all echo phones (0: none).
    pub rate: f64,
    /// Churning phone lifecycles in progress at most (0: no churn).
    pub churn_concurrency: usize,
    /// New churning lifecycles per second (0: as fast as concurrency allows).
    pub churn_rate: f64,
    pub size: usize,
    /// Rest after the load, before the last RSS reading.
    pub rest: Duration,
}

/// One RSS sample of the run and the work done since the previous one.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_s: f64,
    pub rss: u64,
    pub echoes: u64,
    pub churn_cycles: u64,
}

/// Whether RSS kept rising over the last half of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// No rise beyond the threshold.
    Flat,
    /// RSS rose by more than the threshold: something keeps growing.
    Upward,
    /// Fewer than [`Trend::MIN_SAMPLES`] samples in the last half.
    TooShort,
}

/// A least-squares line through the RSS samples of the last half.
#[derive(Clone, Copy, Debug)]
pub struct Trend {
    /// Bytes per minute.
    pub slope: f64,
    /// What the line rises over the last half, bytes.
    pub rise: f64,
    /// The rise that counts as a trend, bytes.
    pub threshold: f64,
    pub samples: usize,
    pub verdict: Verdict,
}

impl Trend {
    /// Samples the last half needs before a verdict is given.
    pub const MIN_SAMPLES: usize = 8;
    /// A rise smaller than this is noise (the pool and the allocator
    /// breathe by a few hundred KiB under steady load).
    pub const MIN_RISE: f64 = 1024.0 * 1024.0;
    /// ... or smaller than this share of the mean RSS.
    pub const MIN_SHARE: f64 = 0.02;

    /// Fits the last half of `samples` (seconds, bytes).
    pub fn of(samples: &[(f64, u64)]) -> Trend {
        let half = &samples[samples.len() / 2..];
        let n = half.len() as f64;
        let mean_t = half.iter().map(|s| s.0).sum::<f64>() / n.max(1.0);
        let mean_rss = half.iter().map(|s| s.1 as f64).sum::<f64>() / n.max(1.0);
        let cov: f64 = half
            .iter()
            .map(|&(t, r)| (t - mean_t) * (r as f64 - mean_rss))
            .sum();
        let var: f64 = half.iter().map(|&(t, _)| (t - mean_t).powi(2)).sum();
        let per_s = if var > 0.0 { cov / var } else { 0.0 };
        let span = match (half.first(), half.last()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0.0,
        };
        let rise = per_s * span;
        let threshold = Self::MIN_RISE.max(Self::MIN_SHARE * mean_rss);
        let verdict = if half.len() < Self::MIN_SAMPLES {
            Verdict::TooShort
        } else if rise > threshold {
            Verdict::Upward
        } else {
            Verdict::Flat
        };
        Trend {
            slope: per_s * 60.0,
            rise,
            threshold,
            samples: half.len(),
            verdict,
        }
    }

    fn json(&self) -> Value {
        json!({
            "fitted_over": "last half of the samples",
            "samples": self.samples,
            "slope_bytes_per_min": self.slope,
            "rise_bytes": self.rise,
            "threshold_bytes": self.threshold,
            "verdict": match self.verdict {
                Verdict::Flat => "flat",
                Verdict::Upward => "UPWARD",
                Verdict::TooShort => "too short to judge",
            },
        })
    }
}

/// What a soak run measured.
pub struct Soak {
    pub params: SoakParams,
    pub binaries: usize,
    /// RSS with the idle and echo population connected, before any load.
    pub rss_before: u64,
    pub hwm: u64,
    pub samples: Vec<Sample>,
    pub trend: Trend,
    pub rest: Rest,
    pub proxy_cpu_pct: f64,
    pub errors: Errors,
    pub command: String,
}

impl Soak {
    pub fn json(&self) -> Value {
        let p = &self.params;
        json!({
            "scenario": "soak",
            "params": {
                "duration_s": p.duration.as_secs_f64(), "interval_s": p.interval.as_secs_f64(),
                "idle_phones": p.idle_phones, "echo_phones": p.echo_phones,
                "phones_per_binary": p.phones_per_binary, "binaries": self.binaries,
                "echo_rate": p.rate, "churn_concurrency": p.churn_concurrency,
                "churn_rate": p.churn_rate, "message_bytes": p.size, "rest_s": p.rest.as_secs_f64(),
            },
            "rss_before_bytes": self.rss_before,
            "hwm_bytes": self.hwm,
            "samples": self.samples.iter().map(|s| json!({
                "t_s": s.t_s, "rss_bytes": s.rss, "echoes": s.echoes, "churn_cycles": s.churn_cycles,
            })).collect::<Vec<_>>(),
            "trend": self.trend.json(),
            "rest": {"after_s": self.rest.after_s, "rss_bytes": self.rest.rss,
                     "kept_bytes": self.rest.kept(self.rss_before)},
            "proxy_cpu_percent": self.proxy_cpu_pct,
            "errors": self.errors.count,
            "error_samples": self.errors.samples,
            "command": self.command,
        })
    }

    /// The samples, the trend and the verdict on stdout.
    pub fn print(&self, header: &str) {
        let mib = |b: f64| b / 1048576.0;
        let p = &self.params;
        println!();
        println!("{header}");
        println!();
        println!(
            "## soak: {} idle + {} echo phones over {} binaries, echo {}/s, churn {} at a time{}, {} s",
            fmt_count(p.idle_phones as f64),
            fmt_count(p.echo_phones as f64),
            self.binaries,
            fmt_count(p.rate),
            p.churn_concurrency,
            if p.churn_rate > 0.0 {
                format!(" at {}/s", fmt_count(p.churn_rate))
            } else {
                String::new()
            },
            p.duration.as_secs()
        );
        println!(
            "{:>8} {:>9} {:>10} {:>12}",
            "t s", "RSS MiB", "echoes/s", "churn/s"
        );
        let mut last_t = 0.0;
        for s in &self.samples {
            let dt = (s.t_s - last_t).max(1e-9);
            println!(
                "{:>8.0} {:>9.2} {:>10} {:>12}",
                s.t_s,
                mib(s.rss as f64),
                fmt_count(s.echoes as f64 / dt),
                fmt_count(s.churn_cycles as f64 / dt)
            );
            last_t = s.t_s;
        }
        let t = &self.trend;
        println!();
        println!(
            "RSS before the load {:.2} MiB, peak (VmHWM) {:.2} MiB, at rest {:.0} s after it {:.2} MiB ({:+.2} MiB); relay CPU {:.0}%",
            mib(self.rss_before as f64),
            mib(self.hwm as f64),
            self.rest.after_s,
            mib(self.rest.rss as f64),
            mib(self.rest.kept(self.rss_before) as f64),
            self.proxy_cpu_pct
        );
        println!(
            "trend over the last half ({} samples): {:+.3} MiB/min, {:+.2} MiB over the half (threshold {:.2} MiB): {}",
            t.samples,
            mib(t.slope),
            mib(t.rise),
            mib(t.threshold),
            match t.verdict {
                Verdict::Flat => "no upward trend",
                Verdict::Upward => "FLAG: UPWARD RSS TREND",
                Verdict::TooShort => "too short to judge",
            }
        );
    }
}

impl Env {
    /// Runs the soak against the relay.
    pub fn soak(&mut self, p: &SoakParams) -> Result<Soak, String> {
        let phones = p.idle_phones + p.echo_phones;
        let binaries = phones.div_ceil(p.phones_per_binary.max(1)).max(1);
        self.check_fit(Kind::Relay, phones + p.churn_concurrency, binaries)?;
        // Churning phones join the same binaries: room for them too.
        let per_server = p.phones_per_binary + p.churn_concurrency.div_ceil(binaries);
        let mut running = self.start(Kind::Relay, per_server, phones)?;
        let mut gen = self.generator(&running, Mode::Echo, p.size)?;
        let pid = running.pid();
        self.log(&format!(
            "relay: connecting {binaries} binaries, {phones} phones"
        ));
        // Echo phones first: the open loop takes turns over the first ones.
        if let Err(e) = self.populate(&mut gen, &mut running, binaries, phones) {
            gen.abort_all();
            running.stop();
            return Err(e);
        }
        let before = sample(pid)?;
        if p.echo_phones > 0 && p.rate > 0.0 {
            gen.start_open_loop_on(p.rate, p.echo_phones);
        }
        if p.churn_concurrency > 0 {
            if p.churn_rate > 0.0 {
                gen.start_paced_churn(p.churn_concurrency, p.churn_rate);
            } else {
                gen.start_churn(p.churn_concurrency);
            }
        }
        gen.reset_stats();
        self.log(&format!(
            "relay: soak for {:?}, RSS every {:?}",
            p.duration, p.interval
        ));
        let start = Instant::now();
        let end = start + p.duration;
        let first = sample(pid)?;
        let mut samples = Vec::new();
        let (mut echoes, mut cycles) = (0, 0);
        while Instant::now() < end && running.alive() {
            let next = (start + p.interval * (samples.len() as u32 + 1)).min(end);
            gen.run_until(next, |g| g.errors.count > 100);
            if gen.errors.count > 100 {
                break;
            }
            let s = sample(pid)?;
            let done = gen.stats.completed - gen.stats.churn_cycles;
            samples.push(Sample {
                t_s: s.at.duration_since(start).as_secs_f64(),
                rss: s.rss,
                echoes: done - echoes,
                churn_cycles: gen.stats.churn_cycles - cycles,
            });
            (echoes, cycles) = (done, gen.stats.churn_cycles);
        }
        let last = sample(pid)?;
        gen.stop_sending();
        let rest = self.rest(&mut gen, pid, p.rest);
        let (errors, command) = finish_run(&mut gen, running)
            .map_err(|tail| format!("relay died during the soak:\n{tail}"))?;
        let points: Vec<(f64, u64)> = samples.iter().map(|s| (s.t_s, s.rss)).collect();
        Ok(Soak {
            params: p.clone(),
            binaries,
            rss_before: before.rss,
            hwm: last.hwm,
            trend: Trend::of(&points),
            samples,
            rest: rest?,
            proxy_cpu_pct: cpu(&first, &last).2,
            errors,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    fn series(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, u64)> {
        (0..n)
            .map(|i| (i as f64 * 5.0, f(i as f64 * 5.0) as u64))
            .collect()
    }

    #[test]
    fn a_plateau_after_warm_up_is_flat() {
        // Grows 30 MiB in the first half, then breathes ±0.5 MiB.
        let s = series(120, |t| {
            let warm = (t / 300.0).min(1.0) * 30.0 * MIB;
            10.0 * MIB + warm + if (t as u64 / 5) % 2 == 0 { 0.5 } else { -0.5 } * MIB
        });
        let trend = Trend::of(&s);
        assert_eq!(trend.verdict, Verdict::Flat, "{trend:?}");
    }

    #[test]
    fn a_steady_leak_is_flagged() {
        // 1 MiB a minute on top of 40 MiB: 5 MiB over the last half.
        let s = series(120, |t| 40.0 * MIB + t / 60.0 * MIB);
        let trend = Trend::of(&s);
        assert_eq!(trend.verdict, Verdict::Upward, "{trend:?}");
        assert!((trend.slope / MIB - 1.0).abs() < 0.01);
    }

    #[test]
    fn a_leak_below_the_noise_floor_is_not_flagged() {
        // 0.1 MiB a minute: 0.5 MiB over five minutes.
        let s = series(120, |t| 40.0 * MIB + t / 600.0 * MIB);
        assert_eq!(Trend::of(&s).verdict, Verdict::Flat);
    }

    #[test]
    fn too_few_samples_get_no_verdict() {
        let s = series(10, |t| t * MIB);
        assert_eq!(Trend::of(&s).verdict, Verdict::TooShort);
        assert_eq!(Trend::of(&[]).verdict, Verdict::TooShort);
    }
}

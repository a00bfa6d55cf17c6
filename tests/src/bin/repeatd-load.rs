//! `repeatd-load`: the load and benchmark harness (see `repeatd_tests::load`
//! and BENCHMARKS.md). Build it with the gateway in release mode and run it:
//!
//! ```sh
//! cargo build --release -p repeatd -p repeatd-tests
//! target/release/repeatd-load --scenario steady --runs 3
//! ```

use std::process::ExitCode;

use repeatd_tests::load::{Options, run};

fn main() -> ExitCode {
    let (options, help) = match Options::parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("repeatd-load: {problem}");
            return ExitCode::from(2);
        }
    };
    if help {
        println!("{}", Options::USAGE);
        return ExitCode::SUCCESS;
    }
    let report = match run(&options) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("repeatd-load: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    let comparison = report.comparison_markdown();
    if !comparison.is_empty() {
        println!("\nPostgreSQL beside redb (same run; CPU on PostgreSQL is gateway + database):\n");
        print!("{comparison}");
    }
    println!("\nThe figures with a target (issues 14 and 15):\n");
    print!("{}", report.targets_markdown());
    for note in &report.notes {
        println!("\nNote: {note}");
    }
    for profile in &report.profile_reports {
        println!("\n{profile}");
    }
    println!(
        "\nforms accepted: {} of {}; payloads delivered: {} of {}",
        report.forms_accepted,
        report.forms_submitted,
        report.payloads_delivered,
        report.payloads_expected
    );
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &report.failures {
            eprintln!("repeatd-load: FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}

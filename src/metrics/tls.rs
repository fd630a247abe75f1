//! Buildbarn's certificate expiry metrics (bb-storage `pkg/util/tls.go`),
//! read at scrape time from the certificates the listeners serve, so that
//! expiry alerts written for Buildbarn work unchanged.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use crate::listener::tls::ServedCertificates;

/// `buildbarn_tls_certificate_not_before_time_seconds` and
/// `buildbarn_tls_certificate_not_after_time_seconds`, one series per DNS
/// name of each served certificate (`dns_name`, `certificate_usage`).
pub struct TlsCertificateDates {
    served: ServedCertificates,
    not_before: GaugeVec,
    not_after: GaugeVec,
}

const LABELS: [&str; 2] = ["dns_name", "certificate_usage"];

impl TlsCertificateDates {
    pub fn new(served: ServedCertificates) -> prometheus::Result<Self> {
        Ok(TlsCertificateDates {
            served,
            not_before: GaugeVec::new(
                Opts::new(
                    "buildbarn_tls_certificate_not_before_time_seconds",
                    "The value of the \"Not Before\" field of the TLS certificate.",
                ),
                &LABELS,
            )?,
            not_after: GaugeVec::new(
                Opts::new(
                    "buildbarn_tls_certificate_not_after_time_seconds",
                    "The value of the \"Not After\" field of the TLS certificate.",
                ),
                &LABELS,
            )?,
        })
    }
}

impl Collector for TlsCertificateDates {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.not_before.desc();
        descs.extend(self.not_after.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (dns_name, usage, dates) in self.served.snapshot() {
            let labels = [dns_name.as_str(), usage];
            self.not_before
                .with_label_values(&labels)
                .set(dates.not_before as f64);
            self.not_after
                .with_label_values(&labels)
                .set(dates.not_after as f64);
        }
        let mut families = self.not_before.collect();
        families.extend(self.not_after.collect());
        families
    }
}

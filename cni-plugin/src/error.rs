//! The plugin's error type and its mapping onto CNI error codes and the CNI
//! error JSON object.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::json;

/// Everything that can make a CNI call fail. Each variant maps to exactly one
/// CNI error code (see [`Error::code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible cni version {version}: supported are {supported}")]
    IncompatibleVersion { version: String, supported: String },
    #[error("invalid environment variable {name}: {reason}")]
    InvalidEnv { name: &'static str, reason: String },
    #[error("failed to decode network config: {reason}")]
    Decode { reason: String },
    #[error("invalid network config field {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("subnet file {} not found: the twill agent has no lease yet", path.display())]
    SubnetFileMissing { path: PathBuf },
    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },
    #[error("subnet {subnet} has no free address left")]
    SubnetExhausted { subnet: String },
    #[error("invalid subnet file {}: {reason}", path.display())]
    InvalidSubnetFile { path: PathBuf, reason: String },
    #[error("ipam store {}: {source}", path.display())]
    Ipam {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("requested address {ip} is not usable: {reason}")]
    AddressUnavailable { ip: IpAddr, reason: String },
    #[error("netlink {op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: crate::netlink::NlError,
    },
    #[error("network namespace {}: {reason}", path.display())]
    Netns { path: PathBuf, reason: String },
    #[error("interface {ifname} already exists in {}", netns.display())]
    InterfaceExists { ifname: String, netns: PathBuf },
    #[error("sysctl {}: {source}", path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("isolation table: {op}: {reason}")]
    Guard { op: String, reason: String },
    #[error("check failed: {what}")]
    Check { what: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl Error {
    /// The CNI error code: 1-99 are reserved by the spec, 100+ are ours.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => 1,
            Error::InvalidEnv { .. } => 4,
            Error::Ipam { .. } => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig { .. } => 7,
            Error::SubnetFileMissing { .. } => 11,
            Error::NotAvailable { .. } => 50,
            Error::SubnetExhausted { .. } => 100,
            Error::InvalidSubnetFile { .. } => 101,
            Error::AddressUnavailable { .. } => 102,
            Error::Netlink { .. } => 103,
            Error::Netns { .. } => 104,
            Error::InterfaceExists { .. } => 105,
            Error::Check { .. } => 106,
            Error::Internal { .. } => 107,
            Error::Sysctl { .. } => 108,
            Error::Guard { .. } => 109,
        }
    }

    /// Short message for `msg`; the full chain goes to `details`.
    fn short_msg(&self) -> &'static str {
        match self {
            Error::IncompatibleVersion { .. } => "incompatible CNI version",
            Error::InvalidEnv { .. } => "invalid environment variables",
            Error::Ipam { .. } => "ipam i/o failure",
            Error::Decode { .. } => "failed to decode content",
            Error::InvalidConfig { .. } => "invalid network config",
            Error::SubnetFileMissing { .. } => "try again later",
            Error::NotAvailable { .. } => "plugin not available",
            Error::SubnetExhausted { .. } => "no free address in node subnet",
            Error::InvalidSubnetFile { .. } => "invalid subnet file",
            Error::AddressUnavailable { .. } => "requested address unavailable",
            Error::Netlink { .. } => "netlink failure",
            Error::Netns { .. } => "network namespace failure",
            Error::InterfaceExists { .. } => "interface already exists",
            Error::Check { .. } => "check failed",
            Error::Internal { .. } => "internal error",
            Error::Sysctl { .. } => "sysctl failure",
            Error::Guard { .. } => "isolation table failure",
        }
    }

    /// The CNI error object printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.short_msg(),
            "details": self.to_string(),
        })
    }

    pub(crate) fn netlink(op: impl Into<String>, source: crate::netlink::NlError) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn ipam(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Ipam {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn env(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidEnv {
            name,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_carries_code_and_variable() {
        let e = Error::env("CNI_IFNAME", "missing");
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["details"].as_str().unwrap().contains("CNI_IFNAME"));
    }
}

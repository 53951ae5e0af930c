//! Default paths and names that the agent, the plugin, the installer and
//! the manifests must agree on when nobody configures them.

/// Where the agent writes the node's subnet file and the plugin reads it.
pub const SUBNET_FILE: &str = "/run/twill/subnet.env";

/// The plugin's IPAM state: one directory per CNI network below it.
pub const IPAM_DATA_DIR: &str = "/var/lib/twill/ipam";

/// The node's pod bridge, created by whichever of agent and plugin runs first.
pub const BRIDGE: &str = "twill0";

/// Where container runtimes look for CNI plugin binaries.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

/// Where container runtimes look for CNI network configs.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// The etcd key prefix holding `config` and `subnets/`; flannel's is
/// `/coreos.com/network`, and the schema below it is the same.
pub const ETCD_PREFIX: &str = "/twill/network";

//! The contracts that twill's binaries (agent, CNI plugin, test harness)
//! share, once and without I/O: the subnet file's format, the lease-key
//! format, the gateway and bridge MAC rules, and the default paths.

pub mod defaults;
pub mod gateway;
pub mod lease_key;
pub mod mac;
pub mod subnet_file;

pub use gateway::{gateway6_of, gateway_of};
pub use lease_key::{lease_key_name, parse_lease_key, parse_subnet_key, subnet_key};
pub use mac::Mac;
pub use subnet_file::{
    Ipv6OnlySubnetEnv, NodeSubnet, NodeSubnet6, NodeSubnets, ParseError, SubnetEnv,
};

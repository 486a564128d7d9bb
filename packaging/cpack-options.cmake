# Read by cpack for each generator (CPACK_PROJECT_CONFIG_FILE), after
# CPackConfig.cmake: what depends on the version chosen at cpack time.

# The package tests build an older and a newer package from one build to
# test upgrades: VPNMETER_PACKAGE_VERSION=0.1.1 cpack ...
if(DEFINED ENV{VPNMETER_PACKAGE_VERSION})
  set(CPACK_PACKAGE_VERSION "$ENV{VPNMETER_PACKAGE_VERSION}")
endif()

# vpnmeter-<version>.x86_64.rpm, without rpm's release number in the name.
set(CPACK_RPM_FILE_NAME "${CPACK_PACKAGE_NAME}-${CPACK_PACKAGE_VERSION}.x86_64.rpm")

from twisted.application.service import ServiceMaker

cipherd = ServiceMaker(
    "cipherd", "cipherd.tap", "Email encryption gateway and webmail messenger", "cipherd"
)

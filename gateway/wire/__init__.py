"""The wire layer: every translation between bytes on MQTT and the gateway's domain values.

`inbound` holds the table from topic to decoder; `refdata`, `agv` and `vda5050` decode what the
WMS, fleet controllers and robots send; `outbound`, `agv` and `epcis` render what the gateway
publishes; `jsondoc` is the strict JSON and schema step every inbound document goes through.
"""

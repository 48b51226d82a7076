/*
 * sc.exe for the Wine test prefix: the verbs till-install uses, through the service control
 * manager's API, with real sc.exe's exit codes (the Win32 error, e.g. 1060 for a service that
 * does not exist). Wine 8.0's own sc.exe exits 1 for every failure and lacks `config` and
 * `failureflag`. Where Wine's manager refuses a setting Windows has (delayed automatic start,
 * the failure-actions flag: ERROR_INVALID_LEVEL), this says so on stdout and goes on, since
 * nothing under Wine can show those settings working (docs/install.md says what was run).
 *
 * Test equipment, never shipped: tests/wine/prepare.py builds it with mingw-w64.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <wchar.h>

#define MAX_OPTIONS 8

typedef struct {
    const wchar_t *key; /* "binpath=" etc., lower case as typed */
    const wchar_t *value;
} option;

static option options[MAX_OPTIONS];
static int option_count;

static const wchar_t *find(const wchar_t *key)
{
    for (int i = 0; i < option_count; i++)
        if (_wcsicmp(options[i].key, key) == 0)
            return options[i].value;
    return NULL;
}

static int failed(const char *call)
{
    DWORD error = GetLastError();
    wchar_t text[512] = L"";
    FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, error, 0,
                   text, 511, NULL);
    wprintf(L"[SC] %hs FAILED %lu:\n\n%ls\n", call, error, text);
    return (int)error;
}

static int unsupported_by_wine(const char *what)
{
    if (GetLastError() != ERROR_INVALID_LEVEL)
        return failed(what);
    wprintf(L"[SC] %hs: not supported by Wine's service manager; ignored\n", what);
    return 0;
}

static const wchar_t *state_name(DWORD state)
{
    switch (state) {
    case SERVICE_STOPPED: return L"STOPPED";
    case SERVICE_START_PENDING: return L"START_PENDING";
    case SERVICE_STOP_PENDING: return L"STOP_PENDING";
    case SERVICE_RUNNING: return L"RUNNING";
    default: return L"OTHER";
    }
}

static int query(SC_HANDLE service, const wchar_t *name)
{
    SERVICE_STATUS status;
    if (!QueryServiceStatus(service, &status))
        return failed("QueryServiceStatus");
    wprintf(L"\nSERVICE_NAME: %ls\n", name);
    wprintf(L"        TYPE               : %lx  WIN32_OWN_PROCESS\n", status.dwServiceType);
    wprintf(L"        STATE              : %lu  %ls\n", status.dwCurrentState,
            state_name(status.dwCurrentState));
    wprintf(L"        WIN32_EXIT_CODE    : %lu  (0x%lx)\n", status.dwWin32ExitCode,
            status.dwWin32ExitCode);
    wprintf(L"        WAIT_HINT          : 0x%lx\n", status.dwWaitHint);
    return 0;
}

static int query_config(SC_HANDLE service, const wchar_t *name)
{
    static BYTE buffer[8192];
    QUERY_SERVICE_CONFIGW *config = (QUERY_SERVICE_CONFIGW *)buffer;
    DWORD needed;
    if (!QueryServiceConfigW(service, config, sizeof buffer, &needed))
        return failed("QueryServiceConfig");
    wprintf(L"[SC] QueryServiceConfig SUCCESS\n\nSERVICE_NAME: %ls\n", name);
    wprintf(L"        START_TYPE         : %lu\n", config->dwStartType);
    wprintf(L"        BINARY_PATH_NAME   : %ls\n", config->lpBinaryPathName);
    wprintf(L"        SERVICE_START_NAME : %ls\n", config->lpServiceStartName);
    return 0;
}

static int set_delayed(SC_HANDLE service)
{
    SERVICE_DELAYED_AUTO_START_INFO info = {TRUE};
    if (!ChangeServiceConfig2W(service, SERVICE_CONFIG_DELAYED_AUTO_START_INFO, &info))
        return unsupported_by_wine("delayed automatic start");
    return 0;
}

static DWORD start_type(const wchar_t *word)
{
    if (word == NULL || _wcsicmp(word, L"demand") == 0)
        return SERVICE_DEMAND_START;
    if (_wcsicmp(word, L"disabled") == 0)
        return SERVICE_DISABLED;
    return SERVICE_AUTO_START; /* auto, delayed-auto */
}

static int create(SC_HANDLE manager, const wchar_t *name)
{
    const wchar_t *start = find(L"start=");
    const wchar_t *image = find(L"binpath=");
    if (image == NULL) {
        wprintf(L"[SC] create: binPath= is required\n");
        return ERROR_INVALID_PARAMETER;
    }
    SC_HANDLE service = CreateServiceW(manager, name, name, SERVICE_ALL_ACCESS,
                                       SERVICE_WIN32_OWN_PROCESS, start_type(start),
                                       SERVICE_ERROR_NORMAL, image, NULL, NULL, NULL, NULL, NULL);
    if (service == NULL)
        return failed("CreateService");
    int code = start && _wcsicmp(start, L"delayed-auto") == 0 ? set_delayed(service) : 0;
    CloseServiceHandle(service);
    if (code == 0)
        wprintf(L"[SC] CreateService SUCCESS\n");
    return code;
}

static int reconfigure(SC_HANDLE service)
{
    const wchar_t *start = find(L"start=");
    DWORD type = start ? start_type(start) : SERVICE_NO_CHANGE;
    if (!ChangeServiceConfigW(service, SERVICE_NO_CHANGE, type, SERVICE_NO_CHANGE,
                              find(L"binpath="), NULL, NULL, NULL, NULL, NULL, NULL))
        return failed("ChangeServiceConfig");
    wprintf(L"[SC] ChangeServiceConfig SUCCESS\n");
    return 0;
}

static int describe(SC_HANDLE service, const wchar_t *text)
{
    SERVICE_DESCRIPTIONW description = {(wchar_t *)text};
    if (!ChangeServiceConfig2W(service, SERVICE_CONFIG_DESCRIPTION, &description))
        return failed("ChangeServiceConfig2");
    wprintf(L"[SC] ChangeServiceConfig2 SUCCESS\n");
    return 0;
}

/* actions= restart/5000/restart/5000/restart/60000 reset= 86400 */
static int failure_actions(SC_HANDLE service)
{
    SC_ACTION actions[3];
    DWORD count = 0;
    const wchar_t *text = find(L"actions=");
    const wchar_t *reset = find(L"reset=");
    wchar_t copy[256];
    wchar_t *state = NULL;
    wcsncpy(copy, text ? text : L"", 255);
    copy[255] = 0;
    for (wchar_t *word = wcstok_s(copy, L"/", &state); word && count < 3;
         word = wcstok_s(NULL, L"/", &state)) {
        wchar_t *delay = wcstok_s(NULL, L"/", &state);
        actions[count].Type = _wcsicmp(word, L"restart") == 0 ? SC_ACTION_RESTART : SC_ACTION_NONE;
        actions[count].Delay = delay ? wcstoul(delay, NULL, 10) : 0;
        count++;
    }
    SERVICE_FAILURE_ACTIONSW failure = {reset ? wcstoul(reset, NULL, 10) : 0, NULL, NULL, count,
                                        actions};
    if (!ChangeServiceConfig2W(service, SERVICE_CONFIG_FAILURE_ACTIONS, &failure))
        return unsupported_by_wine("failure actions");
    wprintf(L"[SC] ChangeServiceConfig2 SUCCESS\n");
    return 0;
}

static int failure_flag(SC_HANDLE service, const wchar_t *flag)
{
    SERVICE_FAILURE_ACTIONS_FLAG value = {flag && wcscmp(flag, L"1") == 0};
    if (!ChangeServiceConfig2W(service, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &value))
        return unsupported_by_wine("failure actions flag");
    wprintf(L"[SC] ChangeServiceConfig2 SUCCESS\n");
    return 0;
}

static int control(SC_HANDLE service, const wchar_t *verb)
{
    SERVICE_STATUS status;
    if (_wcsicmp(verb, L"start") == 0) {
        if (!StartServiceW(service, 0, NULL))
            return failed("StartService");
        wprintf(L"[SC] StartService SUCCESS\n");
        return 0;
    }
    if (!ControlService(service, SERVICE_CONTROL_STOP, &status))
        return failed("ControlService");
    wprintf(L"[SC] ControlService SUCCESS: %ls\n", state_name(status.dwCurrentState));
    return 0;
}

static int on_service(SC_HANDLE service, const wchar_t *verb, const wchar_t *name, int argc,
                      wchar_t **argv)
{
    if (_wcsicmp(verb, L"query") == 0)
        return query(service, name);
    if (_wcsicmp(verb, L"qc") == 0)
        return query_config(service, name);
    if (_wcsicmp(verb, L"config") == 0)
        return reconfigure(service);
    if (_wcsicmp(verb, L"description") == 0)
        return describe(service, argc > 3 ? argv[3] : L"");
    if (_wcsicmp(verb, L"failure") == 0)
        return failure_actions(service);
    if (_wcsicmp(verb, L"failureflag") == 0)
        return failure_flag(service, argc > 3 ? argv[3] : L"1");
    if (_wcsicmp(verb, L"start") == 0 || _wcsicmp(verb, L"stop") == 0)
        return control(service, verb);
    if (_wcsicmp(verb, L"delete") == 0) {
        if (!DeleteService(service))
            return failed("DeleteService");
        wprintf(L"[SC] DeleteService SUCCESS\n");
        return 0;
    }
    wprintf(L"[SC] %ls: not a verb this stand-in knows\n", verb);
    return ERROR_INVALID_PARAMETER;
}

int wmain(int argc, wchar_t **argv)
{
    if (argc < 3) {
        wprintf(L"usage: sc <verb> <service> [key= value ...]\n");
        return ERROR_INVALID_PARAMETER;
    }
    for (int i = 3; i + 1 < argc && option_count < MAX_OPTIONS; i += 2) {
        options[option_count].key = argv[i];
        options[option_count].value = argv[i + 1];
        option_count++;
    }
    SC_HANDLE manager = OpenSCManagerW(NULL, NULL, SC_MANAGER_ALL_ACCESS);
    if (manager == NULL)
        return failed("OpenSCManager");
    int code;
    if (_wcsicmp(argv[1], L"create") == 0) {
        code = create(manager, argv[2]);
    } else {
        SC_HANDLE service = OpenServiceW(manager, argv[2], SERVICE_ALL_ACCESS);
        code = service ? on_service(service, argv[1], argv[2], argc, argv)
                       : failed("OpenService");
        if (service)
            CloseServiceHandle(service);
    }
    CloseServiceHandle(manager);
    fflush(stdout);
    return code;
}
